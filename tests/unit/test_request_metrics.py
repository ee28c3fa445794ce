"""The front end's request metrics (api/request_metrics.py) and request ids, in process: a
plain prometheus_client registry, the inference app over a fake AsyncClient."""

from __future__ import annotations

import asyncio
import time

import falcon.testing
import pytest
from prometheus_client import CollectorRegistry

import zerobatch.api.http_app as http_app
import zerobatch.api.request_metrics as request_metrics
from zerobatch import token_keys
from zerobatch.api.aio_client import Reply
from zerobatch.api.http_app import create_app
from zerobatch.api.http_helpers import MAX_REQUEST_ID_CHARS, valid_request_id
from zerobatch.api.request_metrics import RequestMetrics
from zerobatch.config import FrontendConfig
from zerobatch.errors import (
    DeadlineExceeded,
    HandlerError,
    ModelNotFound,
    PredictionError,
    QueueFull,
    WorkerLost,
)

HOST = "test-host"


def model_labels(model: str, version: str) -> dict[str, str]:
    return {"model_name": model, "model_version": version, "hostname": HOST}


class Figures:
    """The values of one registry's families, once the metrics are flushed."""

    def __init__(self, registry: CollectorRegistry, metrics: RequestMetrics) -> None:
        self.registry = registry
        self.metrics = metrics

    def value(self, name: str, labels: dict[str, str]) -> float:
        self.metrics.flush()
        return self.registry.get_sample_value(name, labels) or 0.0

    def requests(self, model: str, version: str = "default") -> float:
        return self.value("ts_inference_requests_total", model_labels(model, version))

    def latency_us(self, model: str, version: str = "default") -> float:
        return self.value("ts_inference_latency_microseconds_total",
                          model_labels(model, version))

    def seconds_count(self, model: str, version: str = "default") -> float:
        return self.value("zerobatch_request_seconds_count",
                          {"model_name": model, "model_version": version})

    def status(self, kind: str) -> float:
        return self.value(f"Requests{kind}_total", {"Level": "Host", "Hostname": HOST})

    def statuses(self) -> tuple[float, float, float]:
        return self.status("2XX"), self.status("4XX"), self.status("5XX")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry) -> RequestMetrics:
    return RequestMetrics(registry=registry, hostname=HOST)


@pytest.fixture
def figures(registry, metrics) -> Figures:
    return Figures(registry, metrics)


# ------------------------------------------------------------------ RequestMetrics alone

def test_each_record_counts_one_request_its_latency_and_its_seconds(metrics, figures):
    for _ in range(5):
        metrics.record("echo", None, time.monotonic_ns() - 2_000_000)
    metrics.record("echo", "2.0", time.monotonic_ns() - 1_000_000, answered=False)
    assert figures.requests("echo") == 5 and figures.seconds_count("echo") == 5
    assert 5 * 2000 <= figures.latency_us("echo") < 5 * 2000 + 5_000_000
    assert figures.value("zerobatch_request_seconds_sum",
                         {"model_name": "echo", "model_version": "default"}) >= 5 * 0.002
    # not answered by a worker: counted, timed in the histogram, no inference latency
    assert figures.requests("echo", "2.0") == 1 and figures.seconds_count("echo", "2.0") == 1
    assert figures.latency_us("echo", "2.0") == 0


def test_the_label_children_are_made_once_per_model_and_version(metrics, monkeypatch):
    made = []
    real = metrics._make_children
    monkeypatch.setattr(metrics, "_make_children", lambda key: made.append(key) or real(key))
    for _ in range(100):
        metrics.record("a", None, time.monotonic_ns())
        metrics.record("a", "1.0", time.monotonic_ns())
        metrics.record("b", None, time.monotonic_ns())
        metrics.flush()
    assert made == [("a", "default"), ("a", "1.0"), ("b", "default")]


def test_the_histogram_is_written_as_observe_would_write_it(metrics, registry, monkeypatch):
    from prometheus_client import Histogram

    now_ns = 10**15
    monkeypatch.setattr(request_metrics, "monotonic_ns", lambda: now_ns)

    reference = CollectorRegistry()
    observed = Histogram("zerobatch_request_seconds", "reference", ("model_name",
                         "model_version"), registry=reference).labels("h", "default")
    elapsed_ns = [0, 1, 4_999_999, 5_000_000, 5_000_001, 74_000_000, 75_000_000, 300_000_000,
                  9_999_999_999, 10_000_000_000, 10_000_000_001, 99_000_000_000]
    for ns in elapsed_ns:
        observed.observe(ns / 1e9)
        metrics.record("h", None, now_ns - ns)
    metrics.flush()

    def samples(source):
        return sorted((s.name, s.labels.get("le"), s.value)
                      for family in source.collect() if family.name == "zerobatch_request_seconds"
                      for s in family.samples
                      if s.labels.get("model_name") == "h" and not s.name.endswith("_created"))

    ours, theirs = samples(registry), samples(reference)
    assert [s[:2] for s in ours] == [s[:2] for s in theirs]
    for (name, _le, value), (_, _, expected) in zip(ours, theirs, strict=True):
        assert value == pytest.approx(expected), name


def test_the_figures_are_written_by_a_timer_and_at_stop(registry):
    metrics = RequestMetrics(registry=registry, hostname=HOST, flush_interval_s=0.02)
    figures = Figures(registry, metrics)

    def written(name, labels):
        return registry.get_sample_value(name, labels) or 0.0  # no flush of our own

    async def main():
        metrics.start()
        metrics.count_status(200)
        deadline = time.monotonic() + 5
        while written("Requests2XX_total", {"Level": "Host", "Hostname": HOST}) == 0:
            assert time.monotonic() < deadline, "the timer never flushed"
            await asyncio.sleep(0.01)
        metrics.count_status(500)
        metrics.stop()
        assert written("Requests5XX_total", {"Level": "Host", "Hostname": HOST}) == 1
        metrics.count_status(404)  # stopped: no timer, waits for the next flush
        await asyncio.sleep(0.05)
        assert written("Requests4XX_total", {"Level": "Host", "Hostname": HOST}) == 0

    asyncio.run(main())
    assert figures.statuses() == (1, 1, 1)


def test_a_request_after_the_interval_flushes_without_a_timer(registry):
    metrics = RequestMetrics(registry=registry, hostname=HOST, flush_interval_s=0.0)
    metrics.record("e", None, time.monotonic_ns())
    labels = model_labels("e", "default")
    assert registry.get_sample_value("ts_inference_requests_total", labels) == 1


def test_statuses_count_as_torchserve_counts_them(metrics, figures):
    for status in (200, 201, 299, 400, 404, 499, 500, 503, 599, 101, 302, 600):
        metrics.count_status(status)
    # 1xx, 3xx and anything past 599 fall in 5XX, as in TorchServe's sendHttpResponse
    assert figures.statuses() == (3, 3, 6)


def test_a_stream_is_recorded_once_when_it_ends_or_is_cut(metrics, figures):
    async def chunks():
        for chunk in (b"a", b"b", b"c"):
            yield chunk

    async def consume(limit=None):
        before = figures.requests("s")
        stream = metrics.stream(chunks(), "s", None, time.monotonic_ns())
        got = []
        async for chunk in stream:
            got.append(chunk)
            assert figures.requests("s") == before  # not before the end
            if limit is not None and len(got) == limit:
                break
        await stream.aclose()
        return got

    assert asyncio.run(consume()) == [b"a", b"b", b"c"]
    assert figures.requests("s") == 1 and figures.seconds_count("s") == 1
    assert asyncio.run(consume(limit=1)) == [b"a"]
    assert figures.requests("s") == 2


# ------------------------------------------------------------------ the app

class FakeClient:
    """The AsyncClient calls the app makes; predictions answer `outcome` (a Reply, or an
    error to raise) and remember their request ids."""

    def __init__(self) -> None:
        self.outcome: Reply | Exception = Reply(200, "application/json", None, b"{}")
        self.request_ids: list[str] = []

    async def control(self, op: str, *, timeout_ms: int | None = None, **args) -> dict:
        return {"status": "Healthy"} if op == "ping" else {"ready": True}

    async def predict_or_stream(self, model: str, body: bytes, *, request_id: str,
                                **kwargs) -> Reply:
        self.request_ids.append(request_id)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.fixture
def fake() -> FakeClient:
    return FakeClient()


@pytest.fixture
def client(fake, metrics) -> falcon.testing.TestClient:
    app = create_app(FrontendConfig(broker_address="ipc:///nowhere", max_request_bytes=64),
                     fake, metrics)
    return falcon.testing.TestClient(app)


def test_answered_predictions_count_with_their_version(client, figures):
    for _ in range(3):
        assert client.simulate_post("/predictions/echo", body=b"1").status_code == 200
    assert client.simulate_put("/predictions/echo/2.0", body=b"1").status_code == 200
    assert figures.requests("echo") == 3 and figures.requests("echo", "2.0") == 1
    assert figures.seconds_count("echo") == 3 and figures.latency_us("echo") > 0
    assert figures.statuses() == (4, 0, 0)


def test_the_other_inference_routes_count_under_the_model_they_name(client, figures):
    for path in ("/invocations?model_name=echo", "/models/echo/invoke", "/echo/predict"):
        assert client.simulate_get(path).status_code == 200, path
    assert client.simulate_post("/echo/2.0/predict", body=b"1").status_code == 200
    assert figures.requests("echo") == 3 and figures.requests("echo", "2.0") == 1
    assert figures.statuses() == (4, 0, 0)


def test_a_reply_with_an_error_status_counts_in_its_class(client, fake, figures):
    fake.outcome = Reply(422, "application/json", None, b"{}")
    assert client.simulate_post("/predictions/echo", body=b"1").status_code == 422
    assert figures.requests("echo") == 1 and figures.latency_us("echo") > 0
    assert figures.statuses() == (0, 1, 0)


@pytest.mark.parametrize("error, status", [(HandlerError("boom"), 503),  # TorchServe's
                                           (PredictionError("bad input", status=422), 422)])
def test_a_handler_error_is_an_answered_prediction(client, fake, figures, error, status):
    fake.outcome = error
    assert client.simulate_post("/predictions/echo", body=b"1").status_code == status
    assert figures.requests("echo") == 1 and figures.latency_us("echo") > 0
    assert figures.seconds_count("echo") == 1


@pytest.mark.parametrize("error, status", [(QueueFull("full"), 503),
                                           (DeadlineExceeded("late"), 504),
                                           (WorkerLost("gone"), 500)])  # TorchServe's
def test_a_refusal_of_the_broker_counts_the_request_without_inference_latency(
        client, fake, figures, error, status):
    fake.outcome = error
    assert client.simulate_post("/predictions/echo", body=b"1").status_code == status
    assert figures.requests("echo") == 1 and figures.seconds_count("echo") == 1
    assert figures.latency_us("echo") == 0
    assert figures.statuses() == (0, 0, 1)


def test_an_unknown_model_counts_only_as_a_404(client, fake, figures, registry):
    fake.outcome = ModelNotFound("Model not found: nope")
    assert client.simulate_post("/predictions/nope", body=b"1").status_code == 404
    assert figures.statuses() == (0, 1, 0)
    assert figures.requests("nope") == 0 and figures.seconds_count("nope") == 0
    # no label child was made for it: a client cannot grow the series with made-up names
    assert not any(sample.labels.get("model_name") == "nope"
                   for family in registry.collect() for sample in family.samples)


def test_refusals_before_the_broker_and_other_routes_count_only_their_status(
        client, fake, figures):
    assert client.simulate_post("/predictions/echo", body=b"x" * 65).status_code == 413
    assert client.simulate_post("/predictions/echo", body=b"1",
                                headers={"x-zerobatch-timeout-ms": "soon"}).status_code == 400
    # TorchServe predicts whatever the method; CONNECT (a tunnel) is refused here
    assert client.simulate_request("CONNECT", "/predictions/echo").status_code == 405
    assert client.simulate_get("/nowhere").status_code == 404
    assert client.simulate_post("/predictions/", body=b"1").status_code == 404
    assert figures.statuses() == (0, 5, 0)
    assert client.simulate_get("/ping").status_code == 200
    assert client.simulate_get("/ready").status_code == 200
    assert client.simulate_options("/").status_code == 200
    assert figures.statuses() == (3, 5, 0)
    assert figures.requests("echo") == 0 and fake.request_ids == []


def test_an_unexpected_failure_counts_as_a_5xx(client, fake, figures):
    fake.outcome = RuntimeError("a bug")
    assert client.simulate_post("/predictions/echo", body=b"1").status_code == 500
    assert figures.statuses() == (0, 0, 1)


def test_a_bad_token_counts_in_4xx(live_key_file, fake, metrics, figures):
    app = create_app(FrontendConfig(broker_address="ipc:///nowhere", key_file=live_key_file),
                     fake, metrics)
    result = falcon.testing.TestClient(app).simulate_post("/predictions/echo", body=b"1")
    assert result.status_code == 400
    assert figures.statuses() == (0, 1, 0) and figures.requests("echo") == 0


@pytest.fixture
def live_key_file(tmp_path):
    path = str(tmp_path / "key_file.json")
    token_keys.create_key_file(path, 60)
    return path


def test_metrics_are_on_only_with_prometheus_multiprocess_directory(fake, monkeypatch):
    made = []
    monkeypatch.setattr(http_app, "RequestMetrics", lambda: made.append(1) or RequestMetrics(
        registry=CollectorRegistry(), hostname=HOST))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    app = create_app(FrontendConfig(broker_address="ipc:///nowhere"), fake)
    result = falcon.testing.TestClient(app).simulate_post("/predictions/e", body=b"1")
    assert result.status_code == 200 and made == []
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/set/by/the/supervisor")
    create_app(FrontendConfig(broker_address="ipc:///nowhere"), fake)
    assert made == [1]


# ------------------------------------------------------------------ request ids

@pytest.mark.parametrize("value", [
    "a", "client-42", "0f" * 16, "x" * MAX_REQUEST_ID_CHARS, "!#$%&'()*+,-./:;<=>?@[]^_`{|}~",
])
def test_request_ids_a_caller_may_choose(value):
    assert valid_request_id(value)


@pytest.mark.parametrize("value", [
    "", "x" * (MAX_REQUEST_ID_CHARS + 1), "has space", "tab\there", "new\nline", "nul\0",
    "caf\u00e9", "\x7f", "\u2028",
])
def test_request_ids_that_are_replaced(value):
    assert not valid_request_id(value)


def test_a_valid_x_request_id_is_kept_forwarded_and_echoed(client, fake):
    result = client.simulate_post("/predictions/echo", body=b"1",
                                  headers={"X-Request-ID": "trace-0042"})
    assert result.headers["x-request-id"] == "trace-0042"
    assert fake.request_ids == ["trace-0042"]


@pytest.mark.parametrize("value", ["x" * (MAX_REQUEST_ID_CHARS + 1), "two words", "caf\u00e9"])
def test_an_invalid_x_request_id_is_replaced_by_a_fresh_one(client, fake, value):
    result = client.simulate_post("/predictions/echo", body=b"1",
                                  headers={"X-Request-ID": value})
    fresh = result.headers["x-request-id"]
    assert fresh != value and len(fresh) == 32 and int(fresh, 16) >= 0
    assert fake.request_ids == [fresh]


def test_without_x_request_id_each_request_gets_a_fresh_one(client, fake):
    ids = {client.simulate_post("/predictions/echo", body=b"1").headers["x-request-id"]
           for _ in range(3)}
    assert len(ids) == 3 and sorted(ids) == sorted(fake.request_ids)
