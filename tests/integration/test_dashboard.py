"""The live dashboard in a real browser: headless Chromium (tests/support/chromium.py) loads
/dashboard from a tiny server that serves the dashboard's routes and canned /metrics texts
(tests/support/dashboard.py), and the numbers the page shows are read back from the DOM by their
data-testid and compared with the texts: gauges as served, rates as the counters' increase over
the page's own rate window, percentiles as Prometheus' histogram_quantile gives them.

Skipped only when no Chromium is installed (`make test` installs Debian's). The page against a
real server, and the README's screenshot: tests/integration/test_observability_server.py.
"""

from __future__ import annotations

import json
import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tests.support.chromium import Chromium, find_chromium
from tests.support.dashboard import (
    FIRST,
    QUEUE_BOUNDS,
    REQUEST_BOUNDS,
    SECOND,
    DashboardServer,
    histogram_quantile,
    metrics_text,
    ramp,
    window_buckets,
)

pytestmark = pytest.mark.integration

DASH = "\u2013"
#: every element with a data-testid: {testid: [text, data-value]}
READ_NUMBERS = ("Object.fromEntries([...document.querySelectorAll('[data-testid]')]"
                ".map(e => [e.dataset.testid, [e.textContent, e.dataset.value ?? null]]))")
SCRAPES = "Number(document.querySelector('[data-testid=scrape-count]')?.dataset.value || 0)"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium: `make test` installs it (Debian, as root: apt-get install "
                    "chromium), or set CHROMIUM to its executable")
    with Chromium(executable, str(tmp_path_factory.mktemp("chromium"))) as chromium:
        yield chromium


@pytest.fixture
def serve():
    started: list[DashboardServer] = []

    def start(texts: list) -> DashboardServer:
        server = DashboardServer(texts).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def open_dashboard(browser: Chromium, server: DashboardServer, interval_s: float) -> None:
    browser.navigate("about:blank")  # the last test's page stops polling before events clear
    browser.wait_for("location.href === 'about:blank'", what="a blank page")
    browser.events.clear()
    browser.navigate(f"{server.url}/dashboard?interval={interval_s}")


def value(numbers: dict, testid: str) -> float | None:
    """The raw number behind a data-testid (None where the page shows "–")."""
    raw = numbers[testid][1]
    return None if raw == "" else float(raw)


def test_the_page_shows_what_metrics_says(browser, serve, tmp_path):
    server = serve([metrics_text(FIRST), metrics_text(SECOND)])
    open_dashboard(browser, server, 0.5)
    browser.wait_for(f"{SCRAPES} >= 2", what="two scrapes")
    numbers = browser.evaluate(READ_NUMBERS)
    browser.screenshot(str(tmp_path / "dashboard.png"))
    assert browser.errors() == []
    assert numbers["scrape-status"][0] == "ok"
    assert value(numbers, "parse-errors") == 0
    assert value(numbers, "model-count") == 2

    echo, resnet = "echo-1.0", "resnet-2.0"
    # gauges: the newest scrape
    expected_now = {
        f"queue-depth-{echo}": 5, f"in-flight-{echo}": 4, f"queue-depth-{resnet}": 0,
        f"workers-live-{echo}": 3, f"workers-desired-{echo}": 3, f"workers-min-{echo}": 1,
        f"workers-max-{echo}": 4, f"workers-live-{resnet}": 1, f"workers-max-{resnet}": 1,
        # counters' totals
        f"requests-total-{echo}": 140, f"ts-requests-total-{echo}": 140,
        f"ts-requests-total-{resnet}": 60, f"expired-{echo}": 3,
        f"refusals-queue_full-{echo}": 7, f"refusals-deadline_unreachable-{echo}": 1,
        f"refusals-total-{echo}": 8,
        "requests-2xx-total": 170, "requests-4xx-total": 9, "requests-5xx-total": 1,
    }
    for testid, expected in expected_now.items():
        assert value(numbers, testid) == expected, testid
        assert numbers[testid][0] == str(expected), testid

    # rates: the increase between the two scrapes over the seconds between them
    window_s = value(numbers, "rate-window-s")
    assert 0.3 < window_s < 10
    expected_rates = {
        f"request-rate-{echo}": 140 - 100,
        f"request-rate-{resnet}": 60 - 40,  # TorchServe's count: resnet has no zerobatch one
        f"refusals-rate-queue_full-{echo}": 7 - 3,
        f"refusals-rate-deadline_unreachable-{echo}": 0,
        "requests-2xx-rate": 170 - 120, "requests-4xx-rate": 9 - 5, "requests-5xx-rate": 1,
        "inference-requests-rate": (140 + 60) - (100 + 40),
    }
    for testid, increase in expected_rates.items():
        assert value(numbers, testid) == pytest.approx(increase / window_s, rel=1e-9), testid
        assert numbers[testid][0].endswith("/s"), testid

    # percentiles: histogram_quantile over the buckets' increase (both front ends summed)
    for prefix, name, bounds in (("latency", "request_s", REQUEST_BOUNDS),
                                 ("queue", "queue_s", QUEUE_BOUNDS)):
        buckets = window_buckets(name, bounds, FIRST, SECOND)
        assert numbers[f"{prefix}-basis-{echo}"][0].startswith("last ")
        for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            expected = histogram_quantile(q, buckets)
            assert value(numbers, f"{prefix}-{label}-{echo}") == pytest.approx(expected), label
    # the same, from the canned texts' own counts (not the helper above): of the window's 40
    # requests 15 are at or under 10 ms and 12 more under 25 ms, so the 20th is 5/12 into
    # the 10-25 ms bucket
    assert value(numbers, f"latency-p50-{echo}") == pytest.approx(0.01 + 0.015 * 5 / 12)
    assert numbers[f"latency-p50-{echo}"][0] == "16.3"
    assert value(numbers, f"latency-p99-{echo}") == pytest.approx(0.05 + 0.05 * 2.6 / 3)

    # batch sizes in the window: per bucket up to the largest, their count and mean
    for bound, count in ((1, 0), (2, 5), (4, 10), (8, 5)):
        assert value(numbers, f"batch-bucket-{bound}-{echo}") == count, bound
    assert f"batch-bucket-16-{echo}" not in numbers and f"batch-bucket-inf-{echo}" not in numbers
    assert value(numbers, f"batch-count-{echo}") == 20
    assert value(numbers, f"batch-mean-{echo}") == pytest.approx((230 - 150) / 20)

    # what resnet does not report shows "–"
    for testid in (f"in-flight-{resnet}", f"requests-total-{resnet}", f"expired-{resnet}",
                   f"refusals-total-{resnet}", f"latency-p50-{resnet}", f"queue-p99-{resnet}",
                   f"batch-mean-{resnet}"):
        assert numbers[testid] == [DASH, ""], testid


def test_failed_scrapes_and_malformed_lines_do_not_break_the_page(browser, serve):
    garbage = "this is not a sample\nzerobatch_queue_depth{model_name=\"echo\" 3\n"
    server = serve([500, metrics_text(FIRST) + garbage, metrics_text(SECOND) + garbage])
    open_dashboard(browser, server, 0.25)
    browser.wait_for(f"{SCRAPES} >= 2", what="two good scrapes after a failed one")
    numbers = browser.evaluate(READ_NUMBERS)
    assert server.metrics.requests >= 3
    assert numbers["scrape-status"][0] == "ok"
    assert value(numbers, "parse-errors") == 2
    assert value(numbers, "queue-depth-echo-1.0") == 5
    assert browser.errors() == []


def test_a_metrics_endpoint_that_fails_is_shown_as_such(browser, serve):
    server = serve([404])
    open_dashboard(browser, server, 0.25)
    status = browser.wait_for(
        "(text => text.startsWith('error') && text)("
        "document.querySelector('[data-testid=scrape-status]')?.textContent || '')",
        what="the failed scrape")
    assert status == "error: HTTP 404"
    assert browser.evaluate(SCRAPES) == 0
    assert browser.errors() == []


def test_the_parser_reads_what_prometheus_client_writes(browser, serve):
    """Families as prometheus_client exposes them (counters get _total, histograms _bucket,
    _sum, _count and _created), through the page's own parser and arithmetic."""
    server = serve([metrics_text(FIRST)])
    open_dashboard(browser, server, 60)
    browser.wait_for(f"{SCRAPES} >= 1", what="the page")

    registry = CollectorRegistry()
    model = ("model_name", "model_version")
    requests = Counter("zerobatch_requests", "", model, registry=registry)
    status_2xx = Counter("Requests2XX", "", ("Level", "Hostname"), registry=registry)
    queue = Gauge("zerobatch_queue_depth", "", model, registry=registry)
    latency = Histogram("zerobatch_request_seconds", "", model, registry=registry)
    texts = []
    for step, observed_s in enumerate([(0.003, 0.02), (0.2, 0.2)]):
        requests.labels("digits", "1").inc(10 + 20 * step)
        status_2xx.labels("Host", "h").inc(10 + 20 * step)
        queue.labels("digits", "1").set(3 + step)
        for seconds in observed_s:
            latency.labels("digits", "1").observe(seconds)
        texts.append(generate_latest(registry).decode())
    view = browser.evaluate(f"""(() => {{
        const z = window.zerobatchDashboard;
        const texts = {json.dumps(texts)};
        const history = texts.map((text, i) => ({{monoS: 4 * i, wallS: 4 * i,
                                                 samples: z.parsePrometheus(text).samples}}));
        const view = z.computeView(history);
        return {{errors: texts.map((t) => z.parsePrometheus(t).errors), windowS: view.windowS,
                 server: view.server, model: view.models[0],
                 names: view.models.map((m) => m.id)}};
    }})()""")
    assert view["errors"] == [0, 0]
    assert view["names"] == ["digits-1"]
    assert view["windowS"] == 4
    assert view["model"]["queueDepth"] == 4
    assert view["model"]["requestsTotal"] == 40
    assert view["model"]["requestRate"] == pytest.approx(30 / 4)
    assert view["server"]["2xx"] == {"total": 40, "rate": pytest.approx(30 / 4)}
    # the window holds two observations, at 0.2 s: prometheus_client's default buckets
    assert view["model"]["latency"]["basis"] == "last 4.0 s"
    assert view["model"]["latency"]["p50"] == pytest.approx(
        histogram_quantile(0.5, [(0.1, 0), (0.25, 2), (math.inf, 2)]))


def test_the_parser_and_quantile_edge_cases(browser, serve):
    server = serve([metrics_text(FIRST)])
    open_dashboard(browser, server, 60)
    browser.wait_for(f"{SCRAPES} >= 1", what="the page")
    text = "\n".join([
        "# HELP x a help line with \"quotes\"",
        "# TYPE x counter",
        'x_total{a="q\\"uote",b="back\\\\slash",c="new\\nline"} 3.5',
        "no_labels 1e+06 1700000000000",
        'trailing_comma{a="1",} +Inf',
        'spaces { a = "1" , b="2" } -Inf',
        'not_a_number{a="1"} NaN',
        'exemplar_bucket{le="0.5"} 7 # {trace_id="abc"} 0.3 1700000000.0',
        'bad_value{a="1"} seven',
        'bad_escape{a="\\q"} 1',
        'unterminated{a="1} 1',
        "{a=\"1\"} 1",
        "",
        "   ",
    ])
    parsed = browser.evaluate(f"""(() => {{
        const p = window.zerobatchDashboard.parsePrometheus({json.dumps(text)});
        const out = {{}};
        for (const [name, series] of p.samples)
            out[name] = [...series.values()].map(s => [{{...s.labels}}, String(s.value)]);
        return {{samples: out, errors: p.errors, types: [...p.types]}};
    }})()""")
    assert parsed["samples"] == {
        "x_total": [[{"a": 'q"uote', "b": "back\\slash", "c": "new\nline"}, "3.5"]],
        "no_labels": [[{}, "1000000"]],
        "trailing_comma": [[{"a": "1"}, "Infinity"]],
        "spaces": [[{"a": "1", "b": "2"}, "-Infinity"]],
        "not_a_number": [[{"a": "1"}, "NaN"]],
        "exemplar_bucket": [[{"le": "0.5"}, "7"]],
    }
    assert parsed["errors"] == 4
    assert parsed["types"] == [["x", "counter"]]

    cases = [
        (0.5, [(1, 1), (2, 3), (math.inf, 4)]),
        (0.99, [(1, 1), (2, 3), (math.inf, 4)]),  # falls in +Inf: the highest finite bound
        (0.0, [(1, 1), (2, 3), (math.inf, 4)]),
        (1.0, [(1, 0), (2, 4), (math.inf, 4)]),
        (0.5, [(-1, 2), (0, 2), (math.inf, 4)]),  # first bucket's bound is not positive
        (0.5, [(1, 3), (2, 2), (math.inf, 4)]),  # not monotonic: made so
        (0.25, [(2, 2), (1, 1), (2, 1), (math.inf, 8)]),  # unsorted, a bound twice
        (0.5, [(1, 1), (2, 3)]),  # no +Inf bucket: NaN
        (0.5, [(math.inf, 4)]),  # one bucket: NaN
        (0.5, [(1, 0), (math.inf, 0)]),  # no observation: NaN
        (-0.1, [(1, 1), (math.inf, 1)]),
        (1.1, [(1, 1), (math.inf, 1)]),
    ]
    as_js = [(q, [(repr(float(bound)).replace("inf", "Infinity"), count)
                  for bound, count in buckets]) for q, buckets in cases]
    got = browser.evaluate(f"""(() => {{
        const cases = {json.dumps(as_js)};
        return cases.map(([q, buckets]) => String(window.zerobatchDashboard.histogramQuantile(
            q, buckets.map(([le, count]) => ({{le: Number(le), count}})))));
    }})()""")
    for (q, buckets), answer in zip(cases, got, strict=True):
        expected = histogram_quantile(q, buckets)
        if math.isnan(expected):
            assert answer == "NaN", (q, buckets)
        else:
            assert float(answer.replace("Infinity", "inf")) == pytest.approx(expected), (q, buckets)


def test_a_screenshot_of_a_server_under_load(browser, serve, tmp_path):
    scrapes = 40
    server = serve(ramp(scrapes))
    open_dashboard(browser, server, 0.25)
    browser.wait_for(f"{SCRAPES} >= {scrapes}", timeout_s=60, what=f"{scrapes} scrapes")
    charts = browser.evaluate(
        "['rate-chart', 'latency-chart'].map(id => "
        "document.getElementById(id).querySelectorAll('canvas').length)")
    assert charts == [1, 1]
    numbers = browser.evaluate(READ_NUMBERS)
    assert value(numbers, "request-rate-echo-1.0") > 0
    assert value(numbers, "latency-p99-echo-1.0") > 0
    path = tmp_path / "dashboard.png"
    browser.screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert browser.errors() == []
