"""The TorchServe-compatible Context, RequestProcessor and metrics recorder."""

import pytest

import zerobatch
from zerobatch.worker.context import Context, MetricsCache, RequestProcessor


def make_context(batch=2):
    context = Context("m", "/models/m", {"model": {"handler": "h.py"}}, batch_size=4, gpu=1)
    context.request_ids = {i: f"req-{i}" for i in range(batch)}
    context.request_processor = [
        RequestProcessor({"body": {"content-type": "application/json"}, "x-trace": f"t{i}"})
        for i in range(batch)
    ]
    return context


def test_load_time_attributes():
    context = Context("m", "/models/m", {"model": {}}, batch_size=4, gpu=None)
    assert context.model_name == "m"
    assert context.manifest == {"model": {}}
    assert context.model_yaml_config == {}
    assert context.system_properties == {
        "model_dir": "/models/m", "gpu_id": None, "batch_size": 4,
        "server_name": "zerobatch", "server_version": zerobatch.__version__,
        "limit_max_image_pixels": True,
    }
    assert context.request_ids is None and context.request_processor is None
    assert context.get_request_id() is None
    assert isinstance(context.metrics, MetricsCache)


def test_request_ids_and_headers():
    context = make_context()
    assert context.get_request_id() == "req-0"
    assert context.get_request_id(1) == "req-1"
    assert context.get_request_id(5) is None
    assert context.get_request_header(1, "x-trace") == "t1"
    assert context.get_request_header(0, "missing") is None
    assert context.get_request_header(0, "body") == {"content-type": "application/json"}
    assert context.get_all_request_header(0)["x-trace"] == "t0"


def test_header_names_as_a_client_spells_them_find_the_lowercased_ones():
    context = make_context()
    # ASGI lowercases names; TorchServe handlers ask with the client's spelling
    assert context.get_request_header(1, "X-Trace") == "t1"
    assert context.get_request_header(0, "Missing") is None


def test_response_status_defaults_and_setters():
    context = make_context(3)
    assert context.get_response_status(0) == (200, None)
    context.set_response_status(404, "Not Found", idx=1)
    assert context.get_response_status(1) == (404, "Not Found")
    assert context.get_response_status(0) == (200, None)
    context.set_response_status(201)  # idx defaults to 0
    assert context.get_response_status(0) == (201, "")
    context.set_all_response_status(503, "busy")
    assert [context.get_response_status(i) for i in range(3)] == [(503, "busy")] * 3


def test_set_response_status_without_a_batch_is_ignored():
    context = Context("m", "/d", {}, 1, None)
    context.set_response_status(500)  # TorchServe tolerates this during initialize
    context.set_all_response_status(500)


def test_response_headers_and_content_type():
    context = make_context()
    assert context.get_response_content_type(0) is None
    assert context.get_response_headers(0) == {}
    context.set_response_content_type(0, "image/png")
    context.set_response_header(0, "x-model", "m")
    assert context.get_response_content_type(0) == "image/png"
    assert context.get_response_headers(0) == {"content-type": "image/png", "x-model": "m"}
    assert context.get_response_headers(1) == {}


def test_metrics_record_with_request_ids():
    context = make_context()
    metrics = context.metrics
    metrics.reset(context.request_ids)
    metrics.add_time("InferenceTime", 1.5, idx=1)
    metrics.add_counter("Calls", 1)
    metrics.add_size("Payload", 2, unit="kB", dimensions=["d"])
    metrics.add_percent("Util", 50.0)
    metrics.add_metric("Custom", 3, "items")
    metrics.add_error("Bad", 1)
    names = [(r["name"], r["unit"], r["request_id"], r["metric_type"]) for r in metrics.records]
    assert names == [
        ("InferenceTime", "ms", "req-1", "gauge"),
        ("Calls", "count", "req-0,req-1", "counter"),
        ("Payload", "kB", "req-0,req-1", "gauge"),
        ("Util", "percent", "req-0,req-1", "gauge"),
        ("Custom", "items", "req-0,req-1", "counter"),
        ("Bad", "", None, "counter"),
    ]
    assert metrics.records[2]["dimensions"] == ["d"]
    metrics.reset(None)
    assert metrics.records == []


def test_metrics_reject_bad_units_and_dimensions():
    metrics = MetricsCache("m")
    with pytest.raises(ValueError, match="timed metric"):
        metrics.add_time("t", 1, unit="h")
    with pytest.raises(ValueError, match="size metric"):
        metrics.add_size("s", 1, unit="TB")
    with pytest.raises(ValueError, match="list of dimensions"):
        metrics.add_counter("c", 1, dimensions="not a list")
