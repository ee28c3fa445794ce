"""What the worker costs around a handler: one batch through `Service.run_batch`, in-process.

    python -m benchmarks.bench_worker [--workload mlp] [--batch-size 8] [--batches 200]

Loads a harness workload (built with the real torch-model-archiver, as `python -m benchmarks
run` does) into the worker's own `Service`, with one torch thread, and runs the same batch
over and over: request metas as the HTTP front end writes them, bodies as zmq Frames, as the
worker receives them. Prints the medians of the time `run_batch` spends before the handler
is called (decoding metas and bodies, building the Context), in the handler, and after it
(encoding each result and its reply meta, the W_REPLY frames). No sockets and no other
process: the figures are the worker's own Python, not the machine's noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from benchmarks.harness import WORK_DIR
from benchmarks.workloads.archive import build
from benchmarks.workloads.spec import CONTENT_TYPE, NAMES

#: the headers an HTTP front end forwards for a request of wrk's, and a request id
_HEADERS = {"host": "127.0.0.1:8080", "content-type": CONTENT_TYPE, "content-length": "0"}
_REQUEST_ID = "0123456789abcdef0123456789abcdef"


def measure(workload_name: str, batch_size: int, batches: int) -> dict[str, float]:
    """Median ms before, in and after the handler, over `batches` runs after a warm-up."""
    import zmq

    from zerobatch import protocol
    from zerobatch.config import ModelConfig
    from zerobatch.worker.service import Service

    workload = build(workload_name, WORK_DIR)
    service = Service.load(ModelConfig(name=workload.name, path=workload.model_dir,
                                       batch_size=batch_size))
    torch = sys.modules.get("torch")  # only a handler that uses torch has imported it
    if torch is not None:
        torch.set_num_threads(1)
    meta = protocol.encode_meta(CONTENT_TYPE, {**_HEADERS,
                                               "content-length": str(len(workload.payload))},
                                _REQUEST_ID)
    context = zmq.Context()
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    try:
        sender.bind("inproc://bench-worker")
        receiver.connect("inproc://bench-worker")
        sender.send_multipart([meta, workload.payload] * batch_size)
        frames = receiver.recv_multipart(copy=False)
    finally:
        sender.close()
        receiver.close()
        context.term()
    items = [(frames[i], frames[i + 1]) for i in range(0, len(frames), 2)]

    handler = service.entry_point
    marks = [0.0, 0.0]

    def timed_handler(data, ctx):
        marks[0] = time.perf_counter()
        try:
            return handler(data, ctx)
        finally:
            marks[1] = time.perf_counter()

    service.entry_point = timed_handler
    before, inside, after = [], [], []
    for index in range(batches + 10):  # the first ten warm up, unmeasured
        started = time.perf_counter()
        service.run_batch(index, items)
        ended = time.perf_counter()
        if index >= 10:
            before.append(marks[0] - started)
            inside.append(marks[1] - marks[0])
            after.append(ended - marks[1])
    return {name: statistics.median(values) * 1000
            for name, values in (("before_ms", before), ("handler_ms", inside),
                                 ("after_ms", after))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_worker")
    parser.add_argument("--workload", choices=NAMES, default="mlp")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before the handler imports torch
    if args.batch_size < 1 or args.batches < 1:
        parser.error("--batch-size and --batches must be at least 1")
    figures = measure(args.workload, args.batch_size, args.batches)
    overhead = figures["before_ms"] + figures["after_ms"]
    print(f"{args.workload}, batch size {args.batch_size}, medians of {args.batches} batches: "
          f"before the handler {figures['before_ms']:.3f} ms, handler "
          f"{figures['handler_ms']:.3f} ms, after it {figures['after_ms']:.3f} ms "
          f"(the worker's own share: {100 * overhead / (overhead + figures['handler_ms']):.1f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
