"""What recording observability costs each part, in process, without sockets:

  front end   the inference app's own time per prediction (ASGI call, a fake broker client
              answering at once), without and with the request metrics
  worker      Service.run_batch on the echo model, a batch of 8, without and with the
              metrics exporter (prometheus_client's multiprocess files in a temporary folder)
  access log  one access line through a `logging` record, and through BufferedLines (what a
              served front end uses)

    python -m benchmarks.bench_observability_cost [--requests 30000]

Each pair runs alternately twice; the figures are µs per request (per batch for the worker).
benchmarks.observability measures the same on a whole server, under load.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import tempfile
import time

# prometheus_client reads the variable at import: set before anything imports it
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="zbcost")

from benchmarks.common import BENCH_MODELS  # noqa: E402
from zerobatch import logs, protocol  # noqa: E402
from zerobatch.api.access_log import AccessLog  # noqa: E402
from zerobatch.api.aio_client import Reply  # noqa: E402
from zerobatch.api.http_app import create_app  # noqa: E402
from zerobatch.api.request_metrics import RequestMetrics  # noqa: E402
from zerobatch.config import FrontendConfig, ModelConfig  # noqa: E402
from zerobatch.worker.service import Service  # noqa: E402

SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
         "path": "/predictions/echo", "raw_path": b"/predictions/echo", "query_string": b"",
         "headers": [(b"content-length", b"1"), (b"content-type", b"application/json")],
         "client": ("127.0.0.1", 4000), "server": ("127.0.0.1", 8080), "scheme": "http",
         "root_path": ""}


class AnsweringClient:
    """The AsyncClient calls the app makes, answered at once."""

    async def control(self, op: str, **kwargs: object) -> dict:
        return {}

    async def predict_or_stream(self, model: str, body: bytes, **kwargs: object) -> Reply:
        return Reply(200, "application/json", None, b"{}")


async def _receive() -> dict:
    return {"type": "http.request", "body": b"1", "more_body": False}


async def _send(message: dict) -> None:
    pass


def per_call_us(app: object, count: int) -> float:
    async def run(n: int) -> None:
        for _ in range(n):
            await app(SCOPE, _receive, _send)

    asyncio.run(run(count // 10))  # warm up
    started = time.perf_counter()
    asyncio.run(run(count))
    return (time.perf_counter() - started) / count * 1e6


def front_end(count: int) -> dict[str, float]:
    config = FrontendConfig(broker_address="ipc:///nowhere")
    folder = os.environ.pop("PROMETHEUS_MULTIPROC_DIR")  # unset: create_app records nothing
    off = create_app(config, AnsweringClient())
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    on = create_app(config, AnsweringClient(), RequestMetrics())
    return pairs({"off": lambda: per_call_us(off, count), "on": lambda: per_call_us(on, count)})


def worker(count: int) -> dict[str, float]:
    items = [(protocol.encode_meta("application/json", None, None), b'{"x": 1}')] * 8
    model = ModelConfig("echo", os.path.join(BENCH_MODELS, "echo"), batch_size=8)
    services = {"off": Service.load(model), "on": Service.load(model, export_metrics=True)}

    def run(service: Service) -> float:
        batches = max(count // 8, 100)
        for index in range(batches // 10):
            service.run_batch(index, items)
        started = time.perf_counter()
        for index in range(batches):
            service.run_batch(index, items)
        return (time.perf_counter() - started) / batches * 1e6

    return pairs({kind: (lambda s=service: run(s)) for kind, service in services.items()})


def access_log(count: int) -> dict[str, float]:
    async def app(scope: dict, receive: object, send: object) -> None:
        await _send({"type": "http.response.start", "status": 200, "headers": []})

    logs.configure("WARNING", "text", "frontend", stream=io.StringIO())
    record = AccessLog(app)
    buffered = AccessLog(app, lines=logs.buffered_lines("zerobatch.access"))
    return pairs({"record": lambda: per_call_us(record, count),
                  "buffered": lambda: per_call_us(buffered, count)})


def pairs(runs: dict) -> dict[str, float]:
    """Each run twice, alternately; the median of each."""
    figures: dict[str, list[float]] = {kind: [] for kind in runs}
    for _ in range(2):
        for kind, run in runs.items():
            figures[kind].append(run())
    return {kind: statistics.median(values) for kind, values in figures.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_observability_cost")
    parser.add_argument("--requests", type=int, default=30000)
    args = parser.parse_args(argv)
    app = front_end(args.requests)
    print(f"front end: {app['off']:.1f} µs a prediction without metrics, {app['on']:.1f} with "
          f"(+{app['on'] - app['off']:.1f})")
    batch = worker(args.requests)
    print(f"worker: {batch['off']:.1f} µs a batch of 8 without the exporter, {batch['on']:.1f} "
          f"with (+{batch['on'] - batch['off']:.1f})")
    line = access_log(args.requests)
    print(f"access log: {line['record']:.1f} µs a line through a logging record, "
          f"{line['buffered']:.1f} buffered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
