"""`ts.metrics.*`: the metric objects of TorchServe's custom metrics API, as handlers use them.

One module answers the small `ts.metrics` modules (see `worker.ts_alias`):
`ts.metrics.dimension` (Dimension), `ts.metrics.metric_type_enum` (MetricTypes),
`ts.metrics.unit` (Units), `ts.metrics.metric_cache_errors` (the MetricsCache* errors),
`ts.metrics.metric_abstract` (MetricAbstract), `ts.metrics.caching_metric` (CachingMetric) and
`ts.metrics.metric` (Metric, the legacy class). The cache that `context.metrics` is
(add_metric_to_cache, get_metric, add_counter, ...) is in `worker.compat.metrics_cache`.

Where TorchServe's CachingMetric writes a `[METRICS]` log line that its front end parses, ours
appends one record (a dict) to its sink: the records list of the MetricsCache that made it
(the worker exports that list to prometheus_client after each batch: worker.metrics_export).
A metric made on its own (`CachingMetric(...)`, `Metric(...)`) goes to the default sink that
the worker's Service installs (`set_default_sink`); with none installed, it writes
TorchServe's log line, as TorchServe does.

Differences from TorchServe, on purpose: MetricsCachePyYamlError is a ValueError (no yaml
import for handlers that never read a metrics file); a dimension may also be given as a
(name, value) pair.
"""

from __future__ import annotations

import enum
import logging
import socket
import time
from collections import OrderedDict
from typing import Any

log = logging.getLogger(__name__)

#: Where metrics made outside a MetricsCache go: the running worker's records (a list).
_default_sink: list | None = None


def set_default_sink(records: list | None) -> None:
    """Send the records of metrics made on their own to `records` (None: log them)."""
    global _default_sink
    _default_sink = records


class Dimension:
    """A name and value pair: one label of a metric."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.value = value

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"

    def __repr__(self) -> str:
        return f"Dimension({self.name!r}, {self.value!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Dimension) and self.name == other.name
                and self.value == other.value)

    __hash__ = None  # type: ignore[assignment]  # mutable, as TorchServe's

    def to_dict(self) -> dict[str, Any]:
        return {"Name": self.name, "Value": self.value}


class MetricTypes(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Units:
    """TorchServe's unit names: the short form a handler gives -> the long one it shows."""

    def __init__(self) -> None:
        self.units = {
            "ms": "Milliseconds",
            "s": "Seconds",
            "percent": "Percent",
            "count": "Count",
            "MB": "Megabytes",
            "GB": "Gigabytes",
            "kB": "Kilobytes",
            "B": "Bytes",
            "": "unit",
            None: "unit",
        }


MetricUnit = Units()


class GeneralMetricsCacheError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(f"Generic error: {message}")


class MetricsCacheIOError(IOError):
    def __init__(self, message: str) -> None:
        super().__init__(f"Error reading file: {message}")


class MetricsCachePyYamlError(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(f"Error parsing file: {message}")


class MetricsCacheTypeError(TypeError):
    pass


class MetricsCacheValueError(ValueError):
    pass


class MetricsCacheKeyError(KeyError):
    pass


def as_metric_type(value: Any) -> MetricTypes:
    """A MetricTypes from itself or its name ("counter"); MetricsCacheTypeError otherwise."""
    if isinstance(value, MetricTypes):
        return value
    try:
        return MetricTypes(value)
    except ValueError:
        raise MetricsCacheTypeError("`metric_type` must be a MetricTypes enum") from None


class MetricAbstract:
    """A named metric with its unit, dimension names and type (TorchServe's interface)."""

    def __init__(self, metric_name: str, unit: str, dimension_names: list | None = None,
                 metric_type: MetricTypes = MetricTypes.COUNTER) -> None:
        self.metric_name = metric_name
        #: the unit as given ("ms"); `unit` is TorchServe's long form ("Milliseconds")
        self.raw_unit = unit
        self.unit = MetricUnit.units.get(unit, unit) if unit is None or isinstance(unit, str) \
            else unit
        self.dimension_names = list(dimension_names or [])
        self.metric_type = metric_type

    def add_or_update(self, value: int | float, dimension_values: list,
                      request_id: str = "") -> None:
        raise NotImplementedError


class CachingMetric(MetricAbstract):
    """A metric a handler updates: each add_or_update is one record in its sink."""

    def __init__(self, metric_name: str, unit: str, dimension_names: list | None = None,
                 metric_type: MetricTypes = MetricTypes.COUNTER,
                 sink: list | None = None) -> None:
        super().__init__(metric_name, unit, dimension_names, metric_type)
        self._sink = sink

    def _validate_and_get_dimensions(self, dimension_values: list) -> list[Dimension]:
        if dimension_values is None or len(dimension_values) != len(self.dimension_names):
            raise ValueError(f"Dimension values: {dimension_values} should correspond to "
                             f"Dimension names: {self.dimension_names}")
        return [Dimension(name, value)
                for name, value in zip(self.dimension_names, dimension_values, strict=True)]

    def _validate_metric_value(self, value: int | float) -> None:
        if self.metric_type == MetricTypes.COUNTER and value < 0:
            raise ValueError("Counter metric update value cannot be negative")

    def emit_metrics(self, request_id: str | None, value: int | float,
                     dimensions: list, values: tuple) -> None:
        """One record into the sink (or TorchServe's log line when there is none).

        A record: name, value, unit (as given), request_id, dimensions (what the handler
        passed), metric_type ("counter", "gauge", "histogram"), and the labels it is exported
        with, dimension_names and dimension_values (tuples, the defaults included)."""
        sink = self._sink if self._sink is not None else _default_sink
        if sink is None:
            dimension_string = ",".join(
                f"{name}:{label}" for name, label in zip(self.dimension_names, values, strict=True))
            line = (f"[METRICS]{self.metric_name}.{self.unit}:{value}|#{dimension_string}|"
                    f"#type:{self.metric_type.name}|#hostname:{socket.gethostname()},"
                    f"{int(time.time())}")
            if request_id:
                log.info("%s,%s", line, request_id)
            else:
                log.info("%s", line)
            return
        sink.append({
            "name": self.metric_name, "value": value, "unit": self.raw_unit,
            "request_id": request_id, "dimensions": dimensions,
            "metric_type": self.metric_type.value,
            "dimension_names": tuple(self.dimension_names), "dimension_values": values,
        })

    def add_or_update(self, value: int | float, dimension_values: list | None = None,
                      request_id: str | None = "") -> None:
        """Record value with one value per dimension name; a mismatch or a negative counter
        is logged and dropped, as TorchServe does."""
        self.record(value, dimension_values, request_id, None)

    def record(self, value: int | float, dimension_values: list | None,
               request_id: str | None, given: list | None) -> None:
        """add_or_update, keeping `given` (the dimensions a handler passed to an add_*
        method of the cache) as the record's dimensions."""
        if dimension_values is None:
            dimension_values = []
        try:
            dimensions = self._validate_and_get_dimensions(dimension_values)
            self._validate_metric_value(value)
        except (ValueError, TypeError) as exc:
            log.error("[METRICS]Failed to update metric with name:%s and dimension values: "
                      "%s with value: %s: %s", self.metric_name, dimension_values, value, exc)
            return
        self.emit_metrics(request_id, value, dimensions if given is None else given,
                          tuple(dimension_values))

    def update(self, value: int | float, request_id: str = "",
               dimensions: list | None = None) -> None:
        """TorchServe's backwards-compatible update: these Dimension objects replace the
        metric's dimension names."""
        dimensions = list(dimensions or [])
        self.dimension_names = [dim.name for dim in dimensions]
        self.add_or_update(value, [dim.value for dim in dimensions], request_id)


class Metric:
    """TorchServe's legacy metric: name, value, unit and Dimension objects; update() records
    a value (a counter, as TorchServe's)."""

    def __init__(self, name: str, value: int | float, unit: str, dimensions: list,
                 request_id: str | None = None, metric_method: str | None = None) -> None:
        self.metric_type = MetricTypes.COUNTER
        self.dimensions = dimensions
        self.dimension_names = [dim.name for dim in dimensions]
        self.dimension_values = [dim.value for dim in dimensions]
        self._caching_metric = CachingMetric(name, unit, self.dimension_names, self.metric_type)
        self.name = self._caching_metric.metric_name
        self.unit = self._caching_metric.unit
        self.metric_method = metric_method
        self.value = value
        self.request_id = request_id

    def update(self, value: int | float) -> None:
        self._caching_metric.add_or_update(value, self.dimension_values,
                                           request_id=self.request_id)

    def reset(self) -> None:
        self._caching_metric.add_or_update(0, self.dimension_values,
                                           request_id=self.request_id)

    def __str__(self) -> str:
        dims = ",".join(str(d) for d in self.dimensions)
        text = (f"{self.name}.{self.unit}:{self.value}|#{dims}|#hostname:"
                f"{socket.gethostname()},{int(time.time())}")
        return f"{text},{self.request_id}" if self.request_id else text

    def to_dict(self) -> OrderedDict:
        return OrderedDict({
            "MetricName": self.name, "Value": self.value, "Unit": self.unit,
            "Dimensions": self.dimensions, "Timestamp": int(time.time()),
            "HostName": socket.gethostname(), "RequestId": self.request_id,
        })
