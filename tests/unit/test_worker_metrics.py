"""A worker's metrics: TorchServe's custom metrics API (`ts.metrics`, `context.metrics`) and
their export to prometheus_client (worker/metrics_export.py), on plain registries."""

from __future__ import annotations

import functools
import logging

import pytest
from prometheus_client import CollectorRegistry

import zerobatch.worker.compat.metrics as compat_metrics
import zerobatch.worker.service as service_module
from tests.models import model_path, write_model_dir
from tests.support.fake_worker_broker import decode_answers, item
from zerobatch.config import ModelConfig
from zerobatch.errors import ConfigError
from zerobatch.worker.compat.metrics_cache import MetricsCache
from zerobatch.worker.metrics_export import (
    HANDLER_SECONDS,
    MetricsExporter,
    label_name,
    metric_name,
)
from zerobatch.worker.service import Service
from zerobatch.worker.ts_alias import install_ts_aliases

HOST = "test-host"
CUSTOM = model_path("custom_metrics")
CUSTOM_YAML = f"{CUSTOM}/metrics.yaml"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def exporter(registry) -> MetricsExporter:
    return MetricsExporter("m", "1.0", hostname=HOST, registry=registry)


@pytest.fixture
def exported(registry, monkeypatch):
    """Services loaded with export_metrics write into `registry` (hostname HOST)."""
    monkeypatch.setattr(service_module, "MetricsExporter",
                        functools.partial(MetricsExporter, registry=registry, hostname=HOST))
    yield registry
    compat_metrics.set_default_sink(None)


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def model(**labels):
    return {"ModelName": "m", "Level": "Model", "Hostname": HOST, **labels}


def run(service, *bodies):
    return decode_answers(service.run_batch(1, [item(body) for body in bodies])[3:])


# ------------------------------------------------------------------ the cache API

def test_the_shortcuts_record_with_torchserves_default_dimensions():
    install_ts_aliases()
    from ts.metrics.dimension import Dimension
    from ts.metrics.metric_type_enum import MetricTypes

    metrics = MetricsCache("m")
    metrics.set_request_ids({0: "r0", 1: "r1"})
    metrics.add_counter("Calls", 2, idx=1)
    metrics.add_time("T", 1.5, dimensions=[Dimension("Step", "pre")])
    metrics.add_size("S", 3, unit="kB", metric_type=MetricTypes.HISTOGRAM)
    metrics.add_percent("P", 40)
    metrics.add_metric("G", 7, "items", metric_type=MetricTypes.GAUGE)
    metrics.add_error("E", 1)
    got = [(r["name"], r["metric_type"], r["dimension_names"], r["dimension_values"],
            r["request_id"]) for r in metrics.records]
    assert got == [
        ("Calls", "counter", ("ModelName", "Level"), ("m", "Model"), "r1"),
        ("T", "gauge", ("Step", "ModelName", "Level"), ("pre", "m", "Model"), "r0,r1"),
        ("S", "histogram", ("ModelName", "Level"), ("m", "Model"), "r0,r1"),
        ("P", "gauge", ("ModelName", "Level"), ("m", "Model"), "r0,r1"),
        ("G", "gauge", ("ModelName", "Level"), ("m", "Model"), "r0,r1"),
        ("E", "counter", ("Level",), ("Error",), None),
    ]


def test_without_a_request_id_the_level_is_error_as_in_torchserve():
    metrics = MetricsCache("m")
    metrics.add_counter("C", 1)
    assert metrics.records[0]["dimension_names"] == ("Level",)
    assert metrics.records[0]["dimension_values"] == ("Error",)


def test_add_metric_to_cache_get_metric_and_add_or_update():
    install_ts_aliases()
    from ts.metrics.metric_cache_errors import MetricsCacheKeyError, MetricsCacheTypeError
    from ts.metrics.metric_type_enum import MetricTypes

    metrics = MetricsCache("m")
    made = metrics.add_metric_to_cache("Dist", "km", ["Route"], MetricTypes.GAUGE)
    assert metrics.add_metric_to_cache("Dist", "km", ["Route"], MetricTypes.GAUGE) is not made
    assert metrics.records == []  # made, not recorded
    found = metrics.get_metric("Dist", MetricTypes.GAUGE)
    found.add_or_update(12.5, ["A7"], request_id="r")
    found.add_or_update(1, ["too", "many"])  # wrong count: logged and dropped, as TorchServe
    assert [(r["value"], r["dimension_values"], r["request_id"]) for r in metrics.records] == [
        (12.5, ("A7",), "r")]
    with pytest.raises(MetricsCacheKeyError):
        metrics.get_metric("Dist", MetricTypes.COUNTER)
    with pytest.raises(MetricsCacheTypeError):
        metrics.get_metric("Dist", "not a type")
    assert metrics.cache_keys() == ["gauge:Dist"]


def test_a_negative_counter_is_dropped():
    metrics = MetricsCache("m")
    metrics.set_request_ids("load")
    metrics.add_counter("C", -1)
    assert metrics.records == []


def test_the_legacy_metric_and_a_standalone_caching_metric_use_the_default_sink(caplog):
    install_ts_aliases()
    from ts.metrics.caching_metric import CachingMetric
    from ts.metrics.dimension import Dimension
    from ts.metrics.metric import Metric

    sink: list = []
    compat_metrics.set_default_sink(sink)
    try:
        Metric("Legacy", 0, "count", [Dimension("ModelName", "m")], request_id="r").update(4)
        CachingMetric("Alone", "ms", ["A"]).add_or_update(2, ["x"])
    finally:
        compat_metrics.set_default_sink(None)
    assert [(r["name"], r["value"], r["dimension_values"]) for r in sink] == [
        ("Legacy", 4, ("m",)), ("Alone", 2, ("x",))]
    caplog.set_level(logging.INFO, logger="zerobatch.worker.compat.metrics")
    CachingMetric("Logged", "ms", ["A"]).add_or_update(3, ["x"], "rid")
    assert "[METRICS]Logged.Milliseconds:3|#A:x|#type:COUNTER|#hostname:" in caplog.text


def test_a_metrics_file_puts_its_model_metrics_in_the_cache(tmp_path):
    install_ts_aliases()
    from ts.metrics.metric_type_enum import MetricTypes

    metrics = MetricsCache("mnist", CUSTOM_YAML)
    assert set(metrics.cache_keys()) >= {"counter:InferenceRequestCount",
                                         "gauge:RequestBatchSize", "gauge:SizeOfImage"}
    assert metrics.get_metric("RequestBatchSize", MetricTypes.GAUGE).dimension_names == [
        "ModelName"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("ts_metrics: {}\n")
    with pytest.raises(ValueError, match="model_metrics"):
        MetricsCache("m", str(bad))


# ------------------------------------------------------------------ the exporter

def record(name, value, kind="counter", names=("ModelName", "Level"), values=("m", "Model")):
    return {"name": name, "value": value, "unit": "count", "metric_type": kind,
            "dimension_names": tuple(names), "dimension_values": tuple(values),
            "request_id": None, "dimensions": []}


def test_each_type_goes_to_its_prometheus_family(exporter, registry):
    exporter.export([record("Calls", 2), record("Calls", 3),
                     record("Depth", 5, "gauge"), record("Depth", 4, "gauge"),
                     record("Size", 0.3, "histogram"), record("Size", 7, "histogram")])
    assert value(registry, "Calls_total", **model()) == 5
    assert value(registry, "Depth", **model()) == 4  # a gauge keeps the last value
    assert value(registry, "Size_count", **model()) == 2
    assert value(registry, "Size_sum", **model()) == pytest.approx(7.3)
    assert value(registry, "Size_bucket", **model(le="0.5")) == 1


def test_the_workers_own_families(exporter, registry):
    exporter.set_load_time("w-1", 1234.5)
    exporter.observe_handler_s(0.02)
    exporter.set_prediction_ms(3.5)
    exporter.export([record("HandlerTime", 3.0, "gauge")])
    assert value(registry, "WorkerLoadTime", WorkerName="w-1", Level="Host",
                 Hostname=HOST) == 1234.5
    assert value(registry, f"{HANDLER_SECONDS}_count", model_name="m",
                 model_version="1.0") == 1
    assert value(registry, "PredictionTime", **model()) == 3.5
    assert value(registry, "HandlerTime", **model()) == 3.0


def test_names_are_made_valid_for_prometheus(exporter, registry):
    assert metric_name("my.metric-name") == "my_metric_name"
    assert metric_name("9lives") == "_9lives" and metric_name("a:b") == "a:b"
    assert label_name("Method Name") == "Method_Name" and label_name("a:b") == "a_b"
    assert label_name("__reserved") == "_reserved" and label_name(3) == "_3"
    exporter.export([record("latency.ms", 1, "gauge", ("Method Name",), ("pre",))])
    assert value(registry, "latency_ms", Method_Name="pre", Hostname=HOST) == 1


def test_a_clash_is_said_once_and_skipped_not_a_crash(exporter, registry, caplog):
    caplog.set_level(logging.WARNING, logger="zerobatch.worker.metrics_export")
    exporter.export([record("C", 1)])
    for _ in range(3):
        exporter.export([record("C", 1, names=("Other",), values=("x",)),
                         record("C", 1, "gauge")])
    assert value(registry, "C_total", **model()) == 1
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and all("'C'" in text for text in said)


def test_reserved_refused_and_bad_values_are_skipped(exporter, registry, caplog):
    caplog.set_level(logging.WARNING, logger="zerobatch.worker.metrics_export")
    exporter.export([record("Requests2XX", 1), record("ts_inference_requests_total", 1),
                     record("zerobatch_batch_size", 1, "histogram"),
                     record("H", 1, "histogram", ("le",), ("x",)),
                     record("N", "not a number"), record("Neg", -1),
                     record("Fine", 1)])
    assert value(registry, "Fine_total", **model()) == 1
    assert value(registry, "Requests2XX_total", **model()) is None
    assert value(registry, "N_total", **model()) in (None, 0)
    assert value(registry, "Neg_total", **model()) in (None, 0)
    assert len(caplog.records) == 6


def test_the_number_of_label_sets_is_capped(exporter, registry, monkeypatch):
    monkeypatch.setattr("zerobatch.worker.metrics_export.MAX_SERIES", 10)
    exporter.export([record("PerRequest", 1, names=("RequestId",), values=(str(i),))
                     for i in range(50)])
    exported = [s for f in registry.collect() if f.name == "PerRequest"
                for s in f.samples if s.name == "PerRequest_total"]
    assert 0 < len(exported) <= 10


# ------------------------------------------------------------------ in the Service

def test_the_custom_metrics_example_runs_unchanged_and_its_metrics_appear(exported):
    registry = exported
    service = Service.load(ModelConfig("mnist", CUSTOM), export_metrics=True,
                           metrics_config=CUSTOM_YAML)
    host = {"Hostname": HOST}
    mnist = {"ModelName": "mnist", **host}
    level = {"Level": "Model", **mnist}
    # what initialize recorded is exported at load
    assert value(registry, "InitializeCallCount_total", **level) == 1
    replies = run(service, "[0.1, 0.9, 0.0]", "[0.7, 0.2, 0.1]")
    assert [(r.kind, r.body) for r in replies] == [("reply", b"1"), ("reply", b"0")]
    run(service, "[1, 2]")
    assert value(registry, "InferenceRequestCount_total", **host) == 2
    assert value(registry, "PreprocessCallCount_total", **mnist) == 2
    assert value(registry, "RequestBatchSize", **mnist) == 1  # the last batch's size
    assert value(registry, "SizeOfImage", **level) == pytest.approx(2 / 1024)
    assert value(registry, "HandlerMethodTime", MethodName="preprocess", **level) >= 0
    assert value(registry, "PostprocessCallCount_total", **level) == 2
    assert value(registry, "ExamplePercentMetric_count", **level) == 2
    assert value(registry, "ExamplePercentMetric_sum", **level) == 100
    assert value(registry, "HandlerTime", **level) >= 0
    assert value(registry, "PredictionTime", **level) >= 0
    assert value(registry, f"{HANDLER_SECONDS}_count", model_name="mnist",
                 model_version="1.0") == 2
    assert value(registry, "InitializeCallCount_total", **level) == 1  # not again


def test_without_its_metrics_file_the_example_fails_as_in_torchserve(exported):
    service = Service.load(ModelConfig("mnist", CUSTOM), export_metrics=True)
    [reply] = run(service, "[1, 2]")
    assert (reply.kind, reply.status) == ("error", 500)
    assert "RequestBatchSize" in reply.message


def test_a_bad_metrics_file_fails_the_load(tmp_path, exported):
    bad = tmp_path / "metrics.yaml"
    bad.write_text("model_metrics: [")
    with pytest.raises(ConfigError, match="metrics file metrics.yaml"):
        Service.load(ModelConfig("mnist", CUSTOM), metrics_config=str(bad))


def test_every_handler_call_is_timed_and_a_failure_exports_its_metrics(exported, tmp_path):
    registry = exported
    path = write_model_dir(str(tmp_path / "half"), """
        def handle(data, context):
            if data is None:  # the load-time call
                return None
            context.metrics.add_counter("Seen", len(data))
            if any(row["body"] == "fail" for row in data):
                raise ValueError("no")
            return [row["body"] for row in data]
        """)
    service = Service.load(ModelConfig("half", path, batch_size=4), export_metrics=True)
    replies = run(service, '"a"', '"fail"', '"b"', '"c"')
    assert [r.kind for r in replies] == ["reply", "error", "reply", "reply"]
    # 4 fail, then halves: [a, fail] fails, [b, c] ok, then [a] ok and [fail] fails: 5 calls
    assert value(registry, f"{HANDLER_SECONDS}_count", model_name="half",
                 model_version="1.0") == 5
    assert value(registry, "Seen_total", ModelName="half", Level="Model", Hostname=HOST) == 10


def test_without_export_nothing_is_made(monkeypatch):
    monkeypatch.setattr(service_module, "MetricsExporter", None)  # would fail if called
    service = Service.load(ModelConfig("echo", model_path("echo")))
    assert service.exporter is None
    assert [r.kind for r in run(service, '"x"')] == ["reply"]
