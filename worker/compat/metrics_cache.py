"""`context.metrics`: TorchServe's metric cache (`ts.metrics.metric_cache_abstract`,
`ts.metrics.metric_cache_yaml_impl`), recording into a list the worker exports.

The cache holds one CachingMetric per (type, name). `add_metric_to_cache(name, unit,
dimension_names, metric_type)` makes (or replaces) one without recording anything;
`get_metric(name, metric_type)` finds one or raises MetricsCacheKeyError; the metric's
`add_or_update(value, dimension_values, request_id)` records a value. The shortcuts
`add_metric`, `add_counter`, `add_time`, `add_size`, `add_percent` (and `add_error`) make the
metric on first use and record at once, with TorchServe's default dimensions appended to the
handler's Dimension objects: ModelName and Level "Model" while a request id is known (always
inside a worker: the load has one, as TorchServe's), Level "Error" otherwise and for errors.
Their types default as TorchServe's: counter for add_metric and add_counter, gauge for the
others; any of the three types may be asked for (add_time(..., metric_type=HISTOGRAM)).

With a metrics file (TorchServe's metrics.yaml, its `model_metrics` section), the metrics it
names are in the cache from the start, with their dimension names, so `get_metric` finds them.

Every recorded value is one record (a dict, see CachingMetric.emit_metrics) appended to
`records`; the worker clears it before each handler call (`reset`) and exports it after
(worker.metrics_export). Nothing is written to a log.
"""

from __future__ import annotations

import logging
from typing import Any

from zerobatch.worker.compat.metrics import (
    CachingMetric,
    GeneralMetricsCacheError,
    MetricsCacheIOError,
    MetricsCacheKeyError,
    MetricsCachePyYamlError,
    MetricsCacheTypeError,
    MetricsCacheValueError,
    MetricTypes,
    as_metric_type,
)

log = logging.getLogger(__name__)

# Units TorchServe accepts for time and size metrics.
_TIME_UNITS = ("ms", "s")
_SIZE_UNITS = ("MB", "kB", "GB", "B")


def _pairs(dimensions: list) -> list[tuple[str, Any]]:
    """(name, value) of each Dimension (or pair) a handler passed; anything else is skipped."""
    pairs = []
    for dimension in dimensions:
        name = getattr(dimension, "name", None)
        if name is not None:
            pairs.append((name, getattr(dimension, "value", None)))
        elif isinstance(dimension, (tuple, list)) and len(dimension) == 2:
            pairs.append((dimension[0], dimension[1]))
    return pairs


class MetricsCache:
    """The `context.metrics` object (TorchServe's MetricsCacheYamlImpl, method for method)."""

    def __init__(self, model_name: str, config_file_path: str | None = None) -> None:
        self.model_name = model_name
        self.config_file_path = config_file_path
        self.request_ids: dict[int, str] | str | None = None
        self.cache: dict[MetricTypes, dict[str, CachingMetric]] = {}
        self.store: list = []  # TorchServe's attribute; nothing reads it
        #: what was recorded since the last reset (see CachingMetric.emit_metrics)
        self.records: list[dict[str, Any]] = []
        self._parsed_file: Any = None
        if config_file_path:
            self._parse_yaml_file(config_file_path)
            self.initialize_cache()

    # ------------------------------------------------------------------ the worker's side

    def reset(self, request_ids: dict[int, str] | None) -> None:
        """Start a new handler call: forget the previous call's records."""
        self.request_ids = request_ids
        self.records.clear()

    def set_request_ids(self, request_ids: dict[int, str] | str | None) -> None:
        self.request_ids = request_ids

    # ------------------------------------------------------------------ the metrics file

    def _parse_yaml_file(self, config_file_path: str) -> None:
        import yaml  # only when a metrics file is configured
        try:
            with open(config_file_path, encoding="utf-8") as handle:
                self._parsed_file = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            raise MetricsCachePyYamlError(
                f"Error parsing file {config_file_path}: {exc}") from exc
        except OSError as exc:
            raise MetricsCacheIOError(f"Error reading file {config_file_path}: {exc}") from exc

    def initialize_cache(self) -> None:
        """Put the `model_metrics` of the metrics file into the cache."""
        parsed = self._parsed_file
        section = parsed.get("model_metrics") if isinstance(parsed, dict) else None
        if not section:
            raise MetricsCacheValueError("Missing `model_metrics` specification")
        if not isinstance(section, dict):
            raise GeneralMetricsCacheError("`model_metrics` must map metric types to lists")
        for type_name, metrics in section.items():
            try:
                kind = MetricTypes(type_name)
            except ValueError:
                raise MetricsCacheKeyError(f"Invalid metric type: {type_name!r}") from None
            for metric in metrics or ():
                try:
                    self.add_metric_to_cache(metric["name"], metric["unit"],
                                             metric["dimensions"] or [], kind)
                except (KeyError, TypeError) as exc:
                    raise MetricsCacheKeyError(f"Key not found in cache spec: {exc}") from None

    # ------------------------------------------------------------------ TorchServe's API

    def add_metric_to_cache(self, metric_name: str, unit: str,
                            dimension_names: list | None = None,
                            metric_type: MetricTypes = MetricTypes.COUNTER) -> CachingMetric:
        """Make a metric (replacing one of the same type and name) and return it; nothing is
        recorded until its add_or_update."""
        if not isinstance(metric_name, str):
            raise MetricsCacheTypeError("`metric_name` must be a str")
        if not isinstance(unit, str):
            raise MetricsCacheTypeError("`unit` must be a str")
        kind = as_metric_type(metric_type)
        if dimension_names and not isinstance(dimension_names, list):
            raise MetricsCacheTypeError(
                "`dimension_names` should be a list of dimension name strings")
        metrics = self.cache.setdefault(kind, {})
        if metric_name in metrics:
            log.warning("Overriding existing key %s:%s", kind, metric_name)
        metric = CachingMetric(metric_name, unit, dimension_names, kind, sink=self.records)
        metrics[metric_name] = metric
        return metric

    def get_metric(self, metric_name: str,
                   metric_type: MetricTypes = MetricTypes.COUNTER) -> CachingMetric:
        """The cached metric of this type and name; MetricsCacheKeyError when there is none."""
        if not isinstance(metric_name, str):
            raise MetricsCacheTypeError("`metric_name` must be a str")
        kind = as_metric_type(metric_type)
        try:
            return self.cache[kind][metric_name]
        except KeyError:
            raise MetricsCacheKeyError(f"Metric of type '{kind}' and name '{metric_name}' "
                                       "doesn't exist") from None

    def cache_keys(self) -> list[str]:
        return [f"{kind.value}:{name}" for kind, metrics in self.cache.items()
                for name in metrics]

    def add_metric(self, name: str, value: Any, unit: str = "count", idx: Any = None,
                   dimensions: list | None = None,
                   metric_type: MetricTypes | str = MetricTypes.COUNTER) -> None:
        self._record(name, value, unit, idx, dimensions, metric_type)

    def add_counter(self, name: str, value: Any, idx: Any = None,
                    dimensions: list | None = None) -> None:
        self._record(name, value, "count", idx, dimensions, MetricTypes.COUNTER)

    def add_time(self, name: str, value: Any, idx: Any = None, unit: str = "ms",
                 dimensions: list | None = None,
                 metric_type: MetricTypes | str = MetricTypes.GAUGE) -> None:
        if unit not in _TIME_UNITS:
            raise MetricsCacheValueError(
                f"the unit for a timed metric should be one of {list(_TIME_UNITS)}")
        self._record(name, value, unit, idx, dimensions, metric_type)

    def add_size(self, name: str, value: Any, idx: Any = None, unit: str = "MB",
                 dimensions: list | None = None,
                 metric_type: MetricTypes | str = MetricTypes.GAUGE) -> None:
        if unit not in _SIZE_UNITS:
            raise MetricsCacheValueError(
                f"the unit for a size metric should be one of {list(_SIZE_UNITS)}")
        self._record(name, value, unit, idx, dimensions, metric_type)

    def add_percent(self, name: str, value: Any, idx: Any = None,
                    dimensions: list | None = None,
                    metric_type: MetricTypes | str = MetricTypes.GAUGE) -> None:
        self._record(name, value, "percent", idx, dimensions, metric_type)

    def add_error(self, name: str, value: Any, dimensions: list | None = None) -> None:
        self._record(name, value, "", None, dimensions, MetricTypes.COUNTER, error=True)

    # ------------------------------------------------------------------ helpers

    def _get_req(self, idx: Any) -> str | None:
        """The request id of batch index idx, or all of the call's, comma-separated."""
        ids = self.request_ids
        if isinstance(ids, dict):
            if idx is not None and idx in ids:
                return ids[idx]
            return ",".join(ids.values()) if ids else None
        return ids

    def _record(self, name: str, value: Any, unit: str, idx: Any, dimensions: list | None,
                kind: MetricTypes | str, error: bool = False) -> None:
        if dimensions is None:
            dimensions = []
        elif not isinstance(dimensions, list):
            raise MetricsCacheValueError("Please provide a list of dimensions")
        request_id = None if error else self._get_req(idx)
        pairs = _pairs(dimensions)
        names = [pair[0] for pair in pairs]
        if request_id is None:
            if "Level" not in names:
                pairs.append(("Level", "Error"))
        else:
            if "ModelName" not in names:
                pairs.append(("ModelName", self.model_name))
            if "Level" not in names:
                pairs.append(("Level", "Model"))
        kind = as_metric_type(kind)
        try:
            metric = self.get_metric(name, kind)
        except MetricsCacheKeyError:
            metric = self.add_metric_to_cache(name, unit, [pair[0] for pair in pairs], kind)
        metric.record(value, [pair[1] for pair in pairs], request_id, dimensions)
