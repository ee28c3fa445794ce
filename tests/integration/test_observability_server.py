"""Observability of a whole server under a known load: `zerobatch start` with two front ends
and two workers serving pytorch/serve's custom-metrics example (tests/models/custom_metrics,
its metrics.yaml given as TorchServe's metrics_config), then

- /metrics, read with prometheus_client's parser: the front ends' TorchServe counters and
  request histogram, the broker's figures and the workers' handler metrics, each exact for
  the requests sent (answered, failed in the handler, for an unknown model or version), with
  both front ends' files merged;
- the dashboard of that server in headless Chromium: its numbers are the ones /metrics
  serves, the model's requests that named no version counted with its default version; a
  screenshot is taken under load and kept in build/test-artifacts/ (ZB_UPDATE_SCREENSHOT=1
  also copies it to docs/img/dashboard.png, the README's picture).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.chromium import Chromium, find_chromium
from tests.support.metrics import families, value
from tests.support.servers import ROOT, TEST_MODELS, Server

pytestmark = pytest.mark.integration

MODEL = "mnist"
VERSION = "1.0"
HOSTNAME = {"Hostname": __import__("socket").gethostname()}
ANSWERED = 24  # through 8 callers at once: batches of up to 4
FAILED = 3  # `[]`: the example's postprocess fails on an empty row (503, one at a time)
UNKNOWN = 2  # /predictions/nope: 404 before any model is found
BAD_VERSION = 1  # /predictions/mnist/9.9: 404
SETTLE_S = 0.6  # over two of the front ends' 0.25 s flush intervals
LOAD_S = 8.0  # the most the screenshot's load runs
LOAD_CALLERS = 4
LOAD_REQUESTS = 1000  # each caller's most
CHART_SCRAPES = 8  # the scrapes under load before the screenshot (0.5 s apart)
ARTIFACTS = os.path.join(ROOT, "build", "test-artifacts")
DOC_SCREENSHOT = os.path.join(ROOT, "docs", "img", "dashboard.png")
READ_NUMBERS = ("Object.fromEntries([...document.querySelectorAll('[data-testid]')]"
                ".map(e => [e.dataset.testid, e.dataset.value ?? null]))")
SCRAPES = "Number(document.querySelector('[data-testid=scrape-count]')?.dataset.value || 0)"


def scrape(server: Server) -> str:
    status, _headers, body = server.metrics()
    assert status == 200, body
    return body.decode()


def statuses(text: str) -> tuple[float, ...]:
    """Requests2XX, 4XX and 5XX (written without _total, as TorchServe writes them; the
    parser reads them as counters' _total samples); 0 before the first."""
    return tuple(value(text, f"{name}_total", Level="Host", **HOSTNAME)
                 if f"\n{name}{{" in text else 0.0
                 for name in ("Requests2XX", "Requests4XX", "Requests5XX"))


def settled_statuses(server: Server) -> tuple[float, ...]:
    """The status counters once what `zerobatch start` asked (its /ping) is written: the
    front ends write every 0.25 s, so two scrapes SETTLE_S apart that agree hold it all."""
    deadline = time.monotonic() + 30
    last = statuses(scrape(server))
    while True:
        time.sleep(SETTLE_S)
        now = statuses(scrape(server))
        if now == last:
            return now
        assert time.monotonic() < deadline, "the status counters never settled"
        last = now


def predict(server: Server, body: bytes, path: str = f"/predictions/{MODEL}") -> int:
    return server.http("POST", path, body, {"Content-Type": "application/json"})[0]


@pytest.fixture
def server(make_server, tmp_path) -> Server:
    ts_config = tmp_path / "config.properties"
    ts_config.write_text("metrics_config="
                         f"{os.path.join(TEST_MODELS, 'custom_metrics', 'metrics.yaml')}\n")
    return make_server({MODEL: "custom_metrics"}, "--ts-config", str(ts_config),
                       "--frontends", "2", "--workers", "2", "--batch-size", "4",
                       "--max-batch-delay", "20")


def test_metrics_and_the_dashboard_after_a_known_load(server, tmp_path):
    ok_before, client_before, server_before = settled_statuses(server)

    with ThreadPoolExecutor(8) as pool:
        answered = list(pool.map(lambda i: predict(server, b"[0.1, 0.9, 0.0]"),
                                 range(ANSWERED)))
    assert answered == [200] * ANSWERED
    assert [predict(server, b"[]") for _ in range(FAILED)] == [503] * FAILED
    assert [predict(server, b"[1]", "/predictions/nope") for _ in range(UNKNOWN)] == [404] * 2
    assert predict(server, b"[1]", f"/predictions/{MODEL}/9.9") == 404

    # the front ends write their counts every 0.25 s: wait until the last is in
    expected_statuses = (ok_before + ANSWERED, client_before + UNKNOWN + BAD_VERSION,
                         server_before + FAILED)
    deadline = time.monotonic() + 30
    while statuses(text := scrape(server)) != expected_statuses:
        assert time.monotonic() < deadline, (statuses(text), expected_statuses)
        time.sleep(0.1)  # poll interval
    parsed = families(text)  # prometheus_client's parser reads all of it
    assert {"ts_inference_requests", "ts_inference_latency_microseconds",
            "ts_queue_latency_microseconds", "QueueTime", "HandlerTime", "PredictionTime",
            "WorkerLoadTime", "InferenceRequestCount", "zerobatch_request_seconds",
            "zerobatch_handler_seconds", "zerobatch_batch_size"} <= set(parsed)

    # the front ends: the requests for a served model, by the version their path names
    ts_model = {"model_name": MODEL, "model_version": "default", "hostname": HOSTNAME[
        "Hostname"]}
    assert value(text, "ts_inference_requests_total", **ts_model) == ANSWERED + FAILED
    assert value(text, "ts_inference_latency_microseconds_total", **ts_model) > 0
    assert value(text, "zerobatch_request_seconds_count", model_name=MODEL,
                 model_version="default") == ANSWERED + FAILED
    assert "nope" not in text and 'model_version="9.9"' not in text
    # both front ends wrote figures, merged by the metrics API
    folder = os.path.join(server.run_dir, "metrics")
    writers = {int(m.group(1)) for name in os.listdir(folder)
               if (m := re.fullmatch(r"counter_(\d+)\.db", name))}
    assert len(writers & server.frontend_pids()) == 2, (writers, server.frontend_pids())

    # the broker: every request queued and batched; none refused or expired
    broker = {"model_name": MODEL, "model_version": VERSION}
    assert value(text, "zerobatch_requests_total", **broker) == ANSWERED + FAILED
    assert value(text, "zerobatch_batch_size_sum", **broker) == ANSWERED + FAILED
    batches = value(text, "zerobatch_batch_size_count", **broker)
    assert ANSWERED / 4 + FAILED <= batches <= ANSWERED + FAILED
    assert value(text, "zerobatch_default_version", **broker) == 1
    assert value(text, "zerobatch_refusals_total", reason="queue_full", **broker) == 0
    assert value(text, "zerobatch_expired_total", **broker) == 0
    assert value(text, "zerobatch_workers", state="live", **broker) == 2

    # the workers: one handler call per batch (no retries: each failing batch was alone),
    # and the example's own metrics for each call
    assert value(text, "zerobatch_handler_seconds_count", **broker) == batches
    per_model = {"ModelName": MODEL, **HOSTNAME}
    assert value(text, "InferenceRequestCount_total", **HOSTNAME) == batches
    assert value(text, "PreprocessCallCount_total", **per_model) == batches
    assert value(text, "PostprocessCallCount_total", Level="Model", **per_model) == batches
    assert value(text, "HandlerTime", Level="Model", **per_model) >= 0
    assert value(text, "InitializeCallCount_total", Level="Model", **per_model) == 2
    loads = [s for s in parsed["WorkerLoadTime"].samples if s.labels["Level"] == "Host"]
    assert len({s.labels["WorkerName"] for s in loads}) == 2

    check_the_dashboard(server, text, batches, tmp_path)


def check_the_dashboard(server: Server, text: str, batches: float, tmp_path) -> None:
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium: `make test` installs it (Debian, as root: apt-get install "
                    "chromium), or set CHROMIUM to its executable")
    with Chromium(executable, str(tmp_path / "chromium")) as browser:
        browser.navigate(f"http://127.0.0.1:{server.metrics_port}/dashboard?interval=0.5")
        browser.wait_for(f"{SCRAPES} >= 2", timeout_s=30, what="two scrapes")
        numbers = browser.evaluate(READ_NUMBERS)
        model = f"{MODEL}-{VERSION}"
        served = {"model_name": MODEL, "model_version": VERSION}
        shown = {testid: float(numbers[testid]) for testid in (
            f"workers-live-{model}", f"queue-depth-{model}", f"requests-total-{model}",
            f"ts-requests-total-{model}", f"batch-count-{model}", f"refusals-total-{model}",
            "requests-2xx-total", "requests-4xx-total", "requests-5xx-total")}
        ok, client_error, server_error = statuses(scrape(server))
        assert shown == {
            f"workers-live-{model}": value(text, "zerobatch_workers", state="live", **served),
            f"queue-depth-{model}": value(text, "zerobatch_queue_depth", **served),
            f"requests-total-{model}": value(text, "zerobatch_requests_total", **served),
            # the requests that named no version, counted with the default version
            f"ts-requests-total-{model}": ANSWERED + FAILED,
            f"batch-count-{model}": batches,
            f"refusals-total-{model}": 0,
            "requests-2xx-total": ok, "requests-4xx-total": client_error,
            "requests-5xx-total": server_error,
        }
        assert f"model-{MODEL}-default" not in numbers and not any(
            testid.endswith(f"{MODEL}-default") for testid in numbers)

        # under a bounded load, the rate and the latency show; the screenshot is kept
        end = time.monotonic() + LOAD_S

        def load() -> None:
            for _ in range(LOAD_REQUESTS):
                if time.monotonic() >= end:
                    return
                predict(server, b"[0.5, 0.2]")

        with ThreadPoolExecutor(LOAD_CALLERS) as pool:
            callers = [pool.submit(load) for _ in range(LOAD_CALLERS)]
            scrapes = browser.evaluate(SCRAPES)
            browser.wait_for(f"{SCRAPES} >= {scrapes + CHART_SCRAPES} && Number(document."
                             f"querySelector('[data-testid=\"request-rate-{model}\"]')"
                             "?.dataset.value || 0) > 0", timeout_s=30,
                             what="a request rate over a few scrapes")
            os.makedirs(ARTIFACTS, exist_ok=True)
            path = os.path.join(ARTIFACTS, "dashboard.png")
            browser.screenshot(path)
            for caller in callers:
                caller.result()
        with open(path, "rb") as png:
            assert png.read(8) == b"\x89PNG\r\n\x1a\n"
        assert browser.errors() == []
    if os.environ.get("ZB_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(path, DOC_SCREENSHOT)
