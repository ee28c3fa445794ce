"""A worker's metrics, written through prometheus_client for the metrics API to collect.

Families (labels):

    HandlerTime, PredictionTime  gauge, ms   ModelName, Level, Hostname (TorchServe's
                                             model_metrics: base_handler and the Service
                                             record them through context.metrics)
    WorkerLoadTime               gauge, ms   WorkerName, Level ("Host"), Hostname; once,
                                             when the model has loaded
    zerobatch_handler_seconds    histogram   model_name, model_version; each handler call
    a handler's own metrics      their type  their dimension names, the defaults the add_*
                                             shortcuts append (ModelName, Level), then
                                             Hostname, as TorchServe's front end adds it

In multiprocess mode (PROMETHEUS_MULTIPROC_DIR in the worker's environment, which the
supervisor sets when the metrics API runs) prometheus_client writes every value into this
process's files in that directory and the metrics process merges the files of all processes
(MultiProcessCollector): counters and histograms are summed over a model's workers; gauges are
"mostrecent", the value last set by any of them, TorchServe's meaning for a gauge (its front
end keeps the last value a worker reported), which "livemax" or "livesum" would change into a
maximum or a sum over workers. prometheus_client is imported when an exporter is made, never
when this module is.

After each handler call the Service hands the call's records (worker.compat.metrics_cache) to
`export`: counter -> Counter.inc(value), gauge -> Gauge.set(value), histogram ->
Histogram.observe(value). Names are made valid for Prometheus (any character outside
[a-zA-Z0-9_:] becomes "_", a leading digit gets a "_" in front; the same for label names,
without ":"). The first record of a name fixes its type and label names; a later one with
another type or other label names, a name kept for zerobatch's own families (TorchServe's
front-end metrics, names starting ts_ or zerobatch_), a value prometheus_client refuses (not
a number, a negative counter) or a label set it refuses (`le` on a histogram) is skipped and
said once in the log: a metric never fails a batch. At most MAX_SERIES label sets per
process: a handler that puts request ids in a dimension cannot fill the directory.
"""

from __future__ import annotations

import logging
import re
import socket
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

#: prometheus_client's switch for multiprocess mode (read by __main__, the entry point)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: the label TorchServe's front end adds to every model metric
HOSTNAME_LABEL = "Hostname"
#: label sets one worker process exports at most
MAX_SERIES = 10_000
#: how the metrics process merges a gauge over processes (see the module docstring)
GAUGE_MODE = "mostrecent"

#: TorchServe's model_metrics: the labels of HandlerTime and PredictionTime
MODEL_LABELS = ("ModelName", "Level", HOSTNAME_LABEL)
WORKER_LOAD_LABELS = ("WorkerName", "Level", HOSTNAME_LABEL)
HANDLER_SECONDS = "zerobatch_handler_seconds"
#: names a handler metric may not take: TorchServe's front-end metrics (its metrics.yaml
#: ts_metrics, which zerobatch's front end, broker and metrics API write) ...
RESERVED_NAMES = frozenset({
    "Requests2XX", "Requests4XX", "Requests5XX", "QueueTime", "WorkerThreadTime",
    "CPUUtilization", "MemoryUsed", "MemoryAvailable", "MemoryUtilization", "DiskUsage",
    "DiskUtilization", "DiskAvailable", "GPUMemoryUtilization", "GPUMemoryUsed",
    "GPUUtilization",
})
#: ... and any name with these prefixes (ts_inference_requests_total, zerobatch_queue_depth)
RESERVED_PREFIXES = ("ts_", "zerobatch_")

_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str) -> str:
    """name as a valid Prometheus metric name."""
    name = _NAME_CHARS.sub("_", name)
    return "_" + name if not name or name[0].isdigit() else name


def label_name(name: Any) -> str:
    """name as a valid Prometheus label name (never starting "__", which is reserved)."""
    name = _LABEL_CHARS.sub("_", str(name))
    if not name or name[0].isdigit():
        name = "_" + name
    return "_" + name.lstrip("_") if name.startswith("__") else name


def _family_key(name: str) -> str:
    """The name prometheus_client files a family under (a counter's without "_total")."""
    return name[:-6] if name.endswith("_total") else name


def _skip(value: Any) -> None:
    """The writer of a series that is not exported."""


class MetricsExporter:
    """One worker's prometheus_client metrics: its own families and its handler's."""

    def __init__(self, model_name: str, model_version: str, *, hostname: str | None = None,
                 registry: Any = None) -> None:
        from prometheus_client import Counter, Gauge, Histogram  # see the module docstring

        self.hostname = hostname or socket.gethostname()
        self._classes = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
        self._registry = registry
        #: family key -> (type, label names, prometheus_client metric or None: refused)
        self._families: dict[str, tuple[str, tuple[str, ...], Any]] = {}
        #: (name, type, dimension names, dimension values) -> the series' writer
        self._series: dict[tuple, Callable[[Any], None]] = {}
        self._said: set = set()
        self._new_family("HandlerTime", "gauge", MODEL_LABELS, "ms")
        prediction_time = self._new_family("PredictionTime", "gauge", MODEL_LABELS, "ms")
        #: set(ms) of a handler call that succeeded (written here, not through the handler's
        #: records: a batch pays one gauge write for it)
        self.set_prediction_ms: Callable[[float], None] = prediction_time.labels(
            model_name, "Model", self.hostname).set
        self._load_time = self._new_family("WorkerLoadTime", "gauge", WORKER_LOAD_LABELS,
                                           "Milliseconds")
        handler = Histogram(HANDLER_SECONDS, "Seconds a handler call took (one per batch)",
                            ("model_name", "model_version"), registry=registry)
        #: observe(seconds) of one handler call
        self.observe_handler_s: Callable[[float], None] = handler.labels(
            model_name, model_version).observe

    def set_load_time(self, worker_name: str, load_ms: float) -> None:
        """WorkerLoadTime: how long this worker took to load its model."""
        self._load_time.labels(worker_name, "Host", self.hostname).set(load_ms)

    def export(self, records: Iterable[dict[str, Any]]) -> None:
        """Write a handler call's records (see the module docstring); never raises."""
        for record in records:
            try:
                self._export(record)
            except Exception as exc:  # a metric never fails a batch
                self._say(("value", record.get("name")), "metric %r: value %r not exported: "
                          "%s: %s", record.get("name"), record.get("value"),
                          type(exc).__name__, exc)

    # ------------------------------------------------------------------ helpers

    def _export(self, record: dict[str, Any]) -> None:
        key = (record["name"], record["metric_type"], record["dimension_names"],
               record["dimension_values"])
        write = self._series.get(key)
        if write is None:
            write = self._new_series(key, record.get("unit"))
        write(record["value"])

    def _new_series(self, key: tuple, unit: Any) -> Callable[[Any], None]:
        name, kind, names, values = key
        if len(self._series) >= MAX_SERIES:
            self._say("series", "more than %d metric label sets in this worker: new ones are "
                      "not exported (is a request id a dimension?)", MAX_SERIES)
            return _skip
        write = self._writer(name, kind, names, values, unit)
        self._series[key] = write
        return write

    def _writer(self, name: str, kind: str, names: tuple, values: tuple,
                unit: Any) -> Callable[[Any], None]:
        exported = metric_name(name)
        labels = tuple(label_name(label) for label in names)
        label_values = tuple(str(value) for value in values)
        if HOSTNAME_LABEL not in labels:
            labels += (HOSTNAME_LABEL,)
            label_values += (self.hostname,)
        family_key = _family_key(exported)
        family = self._families.get(family_key)
        if family is None:
            if family_key in RESERVED_NAMES or family_key.startswith(RESERVED_PREFIXES):
                self._say(("reserved", name), "metric %r not exported: the name is kept for "
                          "zerobatch's own metrics", name)
                return _skip
            if len(set(labels)) != len(labels):
                self._say(("labels", name), "metric %r not exported: its label names %s "
                          "repeat", name, labels)
                return _skip
            try:
                self._new_family(exported, kind, labels, unit)
            except ValueError as exc:  # a label set prometheus_client refuses
                self._families[family_key] = ("refused", labels, None)
                self._say(("refused", name), "metric %r not exported: %s", name, exc)
                return _skip
            family = self._families[family_key]
        family_kind, family_labels, metric = family
        if metric is None:  # refused by prometheus_client at its first use (said then)
            return _skip
        if family_kind != kind or set(family_labels) != set(labels):
            self._say(("conflict", name, kind, labels), "metric %r (%s, labels %s) not "
                      "exported: the name is already a %s with labels %s", name, kind,
                      ", ".join(labels), family_kind, ", ".join(family_labels))
            return _skip
        if family_labels != labels:
            by_name = dict(zip(labels, label_values, strict=True))
            label_values = tuple(by_name[label] for label in family_labels)
        child = metric.labels(*label_values)
        if kind == "counter":
            return child.inc
        if kind == "gauge":
            return child.set
        return child.observe

    def _new_family(self, name: str, kind: str, labels: tuple[str, ...], unit: Any) -> Any:
        options = {"multiprocess_mode": GAUGE_MODE} if kind == "gauge" else {}
        metric = self._classes[kind](name, f"Torchserve prometheus {kind} metric with unit: "
                                           f"{unit}", labels, registry=self._registry,
                                     **options)
        self._families[_family_key(name)] = (kind, labels, metric)
        return metric

    def _say(self, key: Any, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)
