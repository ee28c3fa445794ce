"""Where the time of a lone request goes: on the way to the handler, in it, and back.

    python -m benchmarks.bench_lone_request [--workloads echo sleep mlp] [--requests 1000]
                                            [--json results/lone.json]

Each harness workload (its files as the real torch-model-archiver packed them) is served by a
real zerobatch server set up as the harness sets it up (batch size 8, 5 ms delay, adaptive,
one worker, one torch thread), with its handler wrapped so that it writes the machine's
monotonic clock (the same clock in every process) at its start and at its end into two
response headers. Requests go one at a time, over ZeroMQ (`api.client.Client`, over ipc) and
over HTTP (one keep-alive `http.client` connection), and each round trip is split into:

  to      the client's send until the handler starts: the client, the broker, the worker's
          receive and decoding
  handler the handler call
  back    the handler's end until the client has the reply: the worker's encoding and send,
          the broker, the front end (HTTP), the client

Why: the harness's figure for the MLP at concurrency 1 (p50 minus the batch-1 forward) is
`to + back`. Echo's legs are the bare overhead. The sleep model's handler waits without
touching memory, so its legs show what a few idle milliseconds cost (the processes and the
CPUs gone to sleep); the MLP's handler also streams 50 MB of weights through the caches
every call, so its legs show what that adds.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import tempfile
import time

from benchmarks.common import (
    at_least,
    bench_parser,
    free_port,
    run_record,
    write_json,
    zerobatch_server,
)
from benchmarks.harness import BATCHED, SERVER_ENV, WORK_DIR
from benchmarks.workloads.archive import build
from benchmarks.workloads.spec import NAMES, Workload

START_HEADER = "x-handler-start-ns"
END_HEADER = "x-handler-end-ns"
WARMUP_REQUESTS = 30
#: the most one workload's requests may take, per transport
MAX_PHASE_S = 60.0
TIMEOUT_MS = 5000

_WRAPPER = '''"""The {inner} handler, with the monotonic clock at its start and end in two response
headers (written by benchmarks/bench_lone_request.py)."""
import time

import {module} as _inner


def handle(data, context):
    start = time.monotonic_ns()
    result = _inner.handle(data, context)
    end = time.monotonic_ns()
    if data is not None:
        for index in range(len(data)):
            context.set_response_header(index, "{start_header}", str(start))
            context.set_response_header(index, "{end_header}", str(end))
    return result
'''


def stamped_model_dir(workload: Workload, parent: str) -> str:
    """A copy of the workload's model directory whose manifest names the stamping wrapper."""
    model_dir = os.path.join(parent, workload.name)
    shutil.copytree(workload.model_dir, model_dir)
    with open(os.path.join(model_dir, "stamped_handler.py"), "w") as handle:
        handle.write(_WRAPPER.format(inner=workload.handler,
                                     module=os.path.splitext(workload.handler)[0],
                                     start_header=START_HEADER, end_header=END_HEADER))
    manifest_path = os.path.join(model_dir, "MAR-INF", "MANIFEST.json")
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    manifest["model"]["handler"] = "stamped_handler.py"
    with open(manifest_path, "w") as handle:
        json.dump(manifest, handle)
    return model_dir


def split(sent_ns: int, headers: dict, received_ns: int) -> tuple[int, int, int]:
    """(to, handler, back) in ns for one round trip, from the handler's two stamps."""
    start_ns, end_ns = int(headers[START_HEADER]), int(headers[END_HEADER])
    if not sent_ns <= start_ns <= end_ns <= received_ns:
        raise RuntimeError(f"stamps out of order: sent {sent_ns}, handler {start_ns}-{end_ns}, "
                           f"received {received_ns}")
    return start_ns - sent_ns, end_ns - start_ns, received_ns - end_ns


def over_zmq(address: str, workload: Workload, requests: int) -> list[tuple[int, int, int]]:
    from zerobatch.api.client import Client

    legs = []
    with Client(address) as client:
        deadline = time.monotonic() + MAX_PHASE_S
        for index in range(WARMUP_REQUESTS + requests):
            if time.monotonic() >= deadline:
                break
            sent_ns = time.monotonic_ns()
            reply = client.predict(workload.name, workload.payload, timeout_ms=TIMEOUT_MS,
                                   content_type=workload.content_type)
            received_ns = time.monotonic_ns()
            if index >= WARMUP_REQUESTS:
                legs.append(split(sent_ns, reply.headers, received_ns))
    return legs


def over_http(port: int, workload: Workload, requests: int) -> list[tuple[int, int, int]]:
    legs = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_MS / 1000)
    headers = {"Content-Type": workload.content_type}
    try:
        deadline = time.monotonic() + MAX_PHASE_S
        for index in range(WARMUP_REQUESTS + requests):
            if time.monotonic() >= deadline:
                break
            sent_ns = time.monotonic_ns()
            connection.request("POST", f"/predictions/{workload.name}", workload.payload,
                               headers)
            response = connection.getresponse()
            response.read()
            received_ns = time.monotonic_ns()
            if response.status != 200:
                raise RuntimeError(f"{workload.name} over HTTP answered {response.status}")
            if index >= WARMUP_REQUESTS:
                legs.append(split(sent_ns, dict(response.getheaders()), received_ns))
    finally:
        connection.close()
    return legs


def medians_ms(legs: list[tuple[int, int, int]]) -> dict[str, float]:
    """Median of each leg and of the whole round trip, in ms."""
    if not legs:
        raise RuntimeError("no request was measured")
    to, handler, back = zip(*legs, strict=True)
    total = [sum(leg) for leg in legs]
    return {"n": len(legs), **{name: statistics.median(values) / 1e6 for name, values in
                               (("to_ms", to), ("handler_ms", handler), ("back_ms", back),
                                ("total_ms", total))}}


def measure(names: list[str], requests: int) -> dict[str, dict[str, dict]]:
    """{workload: {"zmq": medians, "http": medians}}."""
    results: dict[str, dict[str, dict]] = {}
    saved_env = {key: os.environ.get(key) for key in SERVER_ENV}
    os.environ.update(SERVER_ENV)  # the server's processes inherit one torch thread
    parent = tempfile.mkdtemp(prefix="zb-lone-")
    try:
        for name in names:
            workload = build(name, WORK_DIR)
            port = free_port()
            with zerobatch_server(
                    {name: stamped_model_dir(workload, parent)},
                    "--http-port", str(port), "--batch-size", str(BATCHED.batch_size),
                    "--max-batch-delay", str(BATCHED.max_batch_delay_ms),
                    "--workers", str(BATCHED.workers), "--batch-policy", "adaptive",
                    "--frontends", "1") as server:
                results[name] = {
                    "zmq": medians_ms(over_zmq(server["client_address"], workload, requests)),
                    "http": medians_ms(over_http(port, workload, requests))}
    finally:
        shutil.rmtree(parent, ignore_errors=True)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return results


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("benchmarks.bench_lone_request")
    parser.add_argument("--workloads", nargs="+", choices=NAMES, default=list(NAMES))
    parser.add_argument("--requests", type=at_least(1), default=1000,
                        help="requests per workload and transport (after a warm-up)")
    args = parser.parse_args(argv)
    results = measure(args.workloads, args.requests)
    print("medians, ms: to the handler | handler | back to the client | round trip")
    for name, transports in results.items():
        for transport, figures in transports.items():
            print(f"  {name:5s} {transport:4s} to {figures['to_ms']:.3f} | handler "
                  f"{figures['handler_ms']:.3f} | back {figures['back_ms']:.3f} | total "
                  f"{figures['total_ms']:.3f}  (n {figures['n']})")
    write_json(args.json, run_record("lone_request", {"workloads": args.workloads,
                                                      "requests": args.requests}, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
