"""The dashboard's test bench: canned /metrics texts and a tiny server for them.

`DashboardServer` serves the dashboard's routes (api/dashboard_app.py) and GET /metrics from a
list of texts, one per scrape, the last one again and again; it runs uvicorn in a thread on a
socket bound to a free loopback port, and `stop()` ends it. The texts use the metrics process'
family names (docs/dashboard.md), so the assertions made against them apply to a real server.

`FIRST` and `SECOND` are two scrapes of the same server: model echo 1.0 has every family (its
front-end latency split over two front ends, its refusals over two reasons), model resnet 2.0
only gauges and TorchServe's request count, so most of its numbers are absent. `ramp(n)` makes
n scrapes of a server under a changing load, for the screenshot.
"""

from __future__ import annotations

import math
import socket
import threading
import time

import falcon
import falcon.asgi
import uvicorn

from zerobatch.api.dashboard_app import add_dashboard_routes

#: seconds to wait for the server to start or stop
SERVER_WAIT_S = 10.0

BATCH_BOUNDS = (1, 2, 4, 8, 16)
QUEUE_BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1)
REQUEST_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


def _labels(model: tuple[str, str] | None, **extra: str) -> str:
    pairs = []
    if model is not None:
        pairs += [("model_name", model[0]), ("model_version", model[1])]
    pairs += sorted(extra.items())
    return "{" + ",".join(f'{name}="{value}"' for name, value in pairs) + "}" if pairs else ""


def _histogram(name: str, model: tuple[str, str], bounds: tuple, counts: tuple, total: float,
               **extra: str) -> list[str]:
    """Prometheus' lines for one histogram series: `counts` per bucket (not cumulative), the
    last one above the highest bound."""
    lines, cumulative = [], 0
    for bound, count in zip(bounds + ("+Inf",), counts, strict=True):
        cumulative += count
        le = bound if bound == "+Inf" else repr(float(bound))
        lines.append(f"{name}_bucket{_labels(model, le=le, **extra)} {cumulative}")
    lines.append(f"{name}_count{_labels(model, **extra)} {cumulative}")
    lines.append(f"{name}_sum{_labels(model, **extra)} {total}")
    return lines


def metrics_text(scrape: dict) -> str:
    """One /metrics text from a scrape's numbers (see FIRST for the keys)."""
    echo, resnet = ("echo", "1.0"), ("resnet", "2.0")
    lines = ["# HELP zerobatch_queue_depth Requests waiting in the broker's queue.",
             "# TYPE zerobatch_queue_depth gauge",
             f"zerobatch_queue_depth{_labels(echo)} {scrape['queue_depth']}",
             f"zerobatch_queue_depth{_labels(resnet)} {scrape['resnet_queue_depth']}",
             "# TYPE zerobatch_in_flight_requests gauge",
             f"zerobatch_in_flight_requests{_labels(echo)} {scrape['in_flight']}",
             "# TYPE zerobatch_workers gauge"]
    for state, count in scrape["workers"].items():
        lines.append(f"zerobatch_workers{_labels(echo, state=state)} {count}")
    for state, count in scrape["resnet_workers"].items():
        lines.append(f"zerobatch_workers{_labels(resnet, state=state)} {count}")
    lines += ["# TYPE zerobatch_requests_total counter",
              f"zerobatch_requests_total{_labels(echo)} {scrape['requests']}",
              "# TYPE zerobatch_refusals_total counter"]
    for reason, count in scrape["refusals"].items():
        lines.append(f"zerobatch_refusals_total{_labels(echo, reason=reason)} {count}")
    lines += ["# TYPE zerobatch_expired_total counter",
              f"zerobatch_expired_total{_labels(echo)} {scrape['expired']}",
              "# TYPE zerobatch_batch_size histogram",
              *_histogram("zerobatch_batch_size", echo, BATCH_BOUNDS, *scrape["batch_size"]),
              "# TYPE zerobatch_queue_seconds histogram",
              *_histogram("zerobatch_queue_seconds", echo, QUEUE_BOUNDS, *scrape["queue_s"]),
              "# TYPE zerobatch_request_seconds histogram"]
    for frontend, (counts, total) in enumerate(scrape["request_s"]):
        lines += _histogram("zerobatch_request_seconds", echo, REQUEST_BOUNDS, counts, total,
                            frontend=str(frontend))
    lines += ["# TYPE ts_inference_requests_total counter",
              f"ts_inference_requests_total{_labels(echo)} {scrape['requests']}",
              f"ts_inference_requests_total{_labels(resnet)} {scrape['resnet_requests']}"]
    for code in ("2XX", "4XX", "5XX"):
        lines += [f"# TYPE Requests{code} counter",
                  f'Requests{code}{{Level="Host",Hostname="bench"}} {scrape["status"][code]}']
    return "\n".join(lines) + "\n"


FIRST = {
    "queue_depth": 1, "resnet_queue_depth": 0, "in_flight": 2,
    "workers": {"live": 2, "desired": 3, "min": 1, "max": 4},
    "resnet_workers": {"live": 1, "desired": 1, "min": 1, "max": 1},
    "requests": 100, "resnet_requests": 40,
    "refusals": {"queue_full": 3, "deadline_unreachable": 1}, "expired": 2,
    # (per bucket: <=1, <=2, <=4, <=8, <=16, above), sum
    "batch_size": ((10, 10, 20, 10, 0, 0), 150.0),
    "queue_s": ((30, 10, 5, 5, 0, 0), 0.2),
    # one histogram per front end
    "request_s": [((10, 20, 10, 5, 5, 0, 0), 1.0), ((5, 5, 0, 0, 0, 0, 0), 0.05)],
    "status": {"2XX": 120, "4XX": 5, "5XX": 0},
}
SECOND = {
    "queue_depth": 5, "resnet_queue_depth": 0, "in_flight": 4,
    "workers": {"live": 3, "desired": 3, "min": 1, "max": 4},
    "resnet_workers": {"live": 1, "desired": 1, "min": 1, "max": 1},
    "requests": 140, "resnet_requests": 60,
    "refusals": {"queue_full": 7, "deadline_unreachable": 1}, "expired": 3,
    "batch_size": ((10, 15, 30, 15, 0, 0), 230.0),
    "queue_s": ((40, 20, 10, 10, 0, 0), 0.5),
    "request_s": [((12, 25, 20, 15, 8, 0, 0), 2.5), ((8, 10, 2, 0, 0, 0, 0), 0.2)],
    "status": {"2XX": 170, "4XX": 9, "5XX": 1},
}


def _spread(total: int, weights: tuple) -> tuple:
    """`total` observations over buckets in proportion to weights (integers, summing up)."""
    shares = [int(total * weight / sum(weights)) for weight in weights]
    shares[int(max(range(len(weights)), key=lambda i: weights[i]))] += total - sum(shares)
    return tuple(shares)


def ramp(scrapes: int) -> list[str]:
    """`scrapes` texts of a server whose load rises, peaks and eases (for the screenshot);
    every counter only grows."""
    texts, state = [], {key: (dict(value) if isinstance(value, dict) else value)
                        for key, value in FIRST.items()}
    batch, queue, front = [0] * 6, [0] * 6, [0] * 7
    batch_sum = queue_sum = front_sum = 0.0
    for i in range(scrapes):
        load = 0.5 + 0.45 * math.sin(i / scrapes * 1.5 * math.pi - math.pi / 2)
        arrivals = int(20 + 60 * load)
        state["requests"] += arrivals
        state["resnet_requests"] += int(10 + 10 * (1 - load))
        state["queue_depth"] = int(8 * load)
        state["in_flight"] = 1 + int(6 * load)
        state["workers"] = {"live": 2 + round(2 * load), "desired": 2 + round(2 * load),
                            "min": 1, "max": 4}
        state["refusals"] = {"queue_full": state["refusals"]["queue_full"] + int(3 * load),
                             "deadline_unreachable": 1 + i // 10}
        state["expired"] = 2 + i // 8
        state["status"] = {"2XX": state["requests"], "4XX": 5 + i // 6, "5XX": i // 20}
        for counts, add in ((batch, _spread(arrivals // 3, (2, 3, 4 + 6 * load, 1 + 5 * load,
                                                          2 * load, 0.01))),
                            (queue, _spread(arrivals, (6 - 4 * load, 2, 1 + load, 3 * load,
                                                       0.5 * load, 0.01))),
                            (front, _spread(arrivals, (3, 4 - 2 * load, 2, 1 + 2 * load,
                                                       3 * load, 0.5 * load, 0.01)))):
            for bucket, count in enumerate(add):
                counts[bucket] += count
        batch_sum += arrivals
        queue_sum += arrivals * (0.002 + 0.02 * load)
        front_sum += arrivals * (0.01 + 0.05 * load)
        state["batch_size"] = (tuple(batch), batch_sum)
        state["queue_s"] = (tuple(queue), queue_sum)
        state["request_s"] = [(tuple(front), front_sum), ((0,) * 7, 0.0)]
        texts.append(metrics_text(state))
    return texts


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' bucketQuantile (promql/quantile.go) over cumulative (upper bound, count)
    pairs, as a reference for the page's own: the tests compare the two."""
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: list[list[float]] = []
    for bound, count in sorted(buckets):
        if merged and merged[-1][0] == bound:
            merged[-1][1] += count
        else:
            merged.append([bound, count])
    if len(merged) < 2 or merged[-1][0] != math.inf:
        return math.nan
    for i in range(1, len(merged)):
        merged[i][1] = max(merged[i][1], merged[i - 1][1])
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next(i for i, (_bound, count) in enumerate(merged) if count >= rank)
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], merged[b][1]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    return start + (end - start) * (rank / count)


def window_buckets(name: str, bounds: tuple, before: dict, after: dict) -> list[tuple]:
    """A histogram's cumulative buckets increase between two scrapes (summed over front ends
    for the request latency), as the page computes it."""
    def series(scrape):
        value = scrape[name]
        return value if isinstance(value, list) else [value]
    per_bucket = [0] * (len(bounds) + 1)
    for (old, _), (new, _) in zip(series(before), series(after), strict=True):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            per_bucket[i] += b - a
    cumulative, out = 0, []
    for bound, count in zip((*bounds, math.inf), per_bucket, strict=True):
        cumulative += count
        out.append((float(bound), cumulative))
    return out


class CannedMetrics:
    """GET /metrics: texts[i] for the i-th scrape, the last one from then on; an int instead
    of a text is answered as that HTTP status."""

    def __init__(self, texts: list[str | int]) -> None:
        self.texts = texts
        self.requests = 0

    async def on_get(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        text = self.texts[min(self.requests, len(self.texts) - 1)]
        self.requests += 1
        if isinstance(text, int):
            resp.status = text
            resp.text = "canned failure\n"
            return
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
        resp.text = text


def dashboard_app(texts: list[str | int]) -> tuple[falcon.asgi.App, CannedMetrics]:
    app = falcon.asgi.App()
    metrics = CannedMetrics(texts)
    app.add_route("/metrics", metrics)
    add_dashboard_routes(app)
    return app, metrics


class DashboardServer:
    """The dashboard and canned metrics on http://127.0.0.1:<port>, in a thread."""

    def __init__(self, texts: list[str | int]) -> None:
        self.app, self.metrics = dashboard_app(texts)
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, lifespan="off", ws="none", log_level="warning",
                                access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._socket]}, daemon=True)

    def start(self) -> DashboardServer:
        self._thread.start()
        deadline = time.monotonic() + SERVER_WAIT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the dashboard test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(SERVER_WAIT_S)
        self._socket.close()
