"""What the worker's overlap buys: batches per second of one real worker, overlap on and off.

    python -m benchmarks.bench_overlap [--workload mlp] [--batch-size 8] [--rounds 4]
                                       [--seconds 3]

With the next batch already waiting, a worker hands a long batch's answers to its reply
thread and starts the next batch at once (worker.loop, Overlap; `overlapReplies: true`).
This measures that alone:
one `python -m worker` process, kept busy by this process playing a minimal broker (a ROUTER
on loopback that takes READY, answers heartbeats, and keeps two batches in flight, a new one
for each W_REPLY), with no front end and no client in the way. "on" and "off" are copies of
the model directory with `overlapReplies: true` and `false` in their model-config.yaml (their
other files are links).
Each round runs a fresh worker per mode, in alternating order, warms it up for a second and
counts its replies for `seconds`; the figure is the ratio of the medians, which the
machine's noise moves much less than either number.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import zmq

from benchmarks.bench_worker import _HEADERS, _REQUEST_ID
from benchmarks.common import ROOT
from benchmarks.harness import WORK_DIR
from benchmarks.workloads.archive import build
from benchmarks.workloads.spec import CONTENT_TYPE, NAMES
from zerobatch import protocol
from zerobatch.config import ModelConfig, WorkerConfig
from zerobatch.model_files import MODEL_CONFIG_FILE

#: batches sent ahead of the worker: one running, one waiting, as the broker keeps them
IN_FLIGHT = 2
WARMUP_S = 1.0
#: longest a worker may take to import torch, load its model and say READY
READY_TIMEOUT_S = 120
STOP_TIMEOUT_S = 10


def overlap_copy(model_dir: str, into: str, overlap: bool) -> str:
    """`model_dir` as a directory of links, with `overlapReplies: <overlap>` in its config."""
    copy = os.path.join(into, "overlap-on" if overlap else "overlap-off")
    os.makedirs(copy)
    for name in os.listdir(model_dir):
        if name != MODEL_CONFIG_FILE:
            os.symlink(os.path.join(model_dir, name), os.path.join(copy, name))
    config = os.path.join(model_dir, MODEL_CONFIG_FILE)
    with open(os.path.join(copy, MODEL_CONFIG_FILE), "w") as out:
        if os.path.isfile(config):
            with open(config) as existing:
                out.write(existing.read().rstrip("\n") + "\n")
        out.write(f"overlapReplies: {'true' if overlap else 'false'}\n")
    return copy


def batches_per_second(model_dir: str, name: str, batch_size: int, payload: bytes,
                       seconds: float) -> float:
    """Start a worker on model_dir, keep IN_FLIGHT batches in it, count replies per second."""
    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    config = WorkerConfig("bench-overlap", f"tcp://127.0.0.1:{port}",
                          ModelConfig(name, model_dir, batch_size=batch_size), log_level="WARNING")
    meta = protocol.encode_meta(CONTENT_TYPE, {**_HEADERS, "content-length": str(len(payload))},
                                _REQUEST_ID)
    pairs = [meta, payload] * batch_size
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    worker = subprocess.Popen([sys.executable, "-m", "zerobatch.worker", "--config",
                               config.to_json()], cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    try:
        identity = _wait_ready(router, worker)
        next_id = 1
        for _ in range(IN_FLIGHT):
            router.send_multipart([identity, protocol.VERSION, protocol.W_BATCH,
                                   protocol.encode_batch_id(next_id), *pairs], copy=False)
            next_id += 1
        started = time.monotonic()
        count_from = started + WARMUP_S
        ends = count_from + seconds
        counted = 0
        while True:
            now = time.monotonic()
            if now >= ends:
                break
            if not router.poll(max(1, int((ends - now) * 1000)), zmq.POLLIN):
                continue
            frames = router.recv_multipart(copy=False)
            sender, command = frames[0].bytes, frames[2].bytes
            if sender.endswith(protocol.HEARTBEAT_SUFFIX):
                router.send_multipart([sender, *protocol.HEARTBEAT_FRAMES])
            elif command == protocol.W_REPLY:
                if time.monotonic() >= count_from:
                    counted += 1
                router.send_multipart([identity, protocol.VERSION, protocol.W_BATCH,
                                       protocol.encode_batch_id(next_id), *pairs], copy=False)
                next_id += 1
        return counted / seconds
    finally:
        worker.terminate()
        try:
            worker.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(STOP_TIMEOUT_S)
        router.close(linger=0)


def _wait_ready(router: zmq.Socket, worker: subprocess.Popen) -> bytes:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode} before READY")
        if router.poll(100, zmq.POLLIN):
            frames = router.recv_multipart()
            if len(frames) == 4 and frames[2] == protocol.W_READY:
                return frames[0]
    raise RuntimeError(f"the worker said no READY within {READY_TIMEOUT_S} s")


def measure(workload_name: str, batch_size: int, rounds: int, seconds: float) -> dict:
    """{"on": [batches/s per round], "off": [...], "ratio": median(on) / median(off)}."""
    workload = build(workload_name, WORK_DIR)
    results: dict[str, list[float]] = {"on": [], "off": []}
    scratch = tempfile.mkdtemp(prefix="bench-overlap-")
    try:
        dirs = {mode: overlap_copy(workload.model_dir, scratch, mode == "on")
                for mode in ("on", "off")}
        for round_index in range(rounds):
            order = ("on", "off") if round_index % 2 == 0 else ("off", "on")
            for mode in order:
                results[mode].append(batches_per_second(dirs[mode], workload.name, batch_size,
                                                        workload.payload, seconds))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    off = statistics.median(results["off"])
    return {**results, "ratio": statistics.median(results["on"]) / off if off else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_overlap")
    parser.add_argument("--workload", choices=NAMES, default="mlp")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.rounds < 1 or not 0 < args.seconds <= 60:
        parser.error("--batch-size and --rounds must be at least 1, --seconds in (0, 60]")
    figures = measure(args.workload, args.batch_size, args.rounds, args.seconds)
    for mode in ("on", "off"):
        values = figures[mode]
        median = statistics.median(values)
        per_batch = f", {1000 / median:.3f} ms per batch" if median else ""
        print(f"overlap {mode:3}: {', '.join(f'{v:,.1f}' for v in values)} batches/s "
              f"(median {median:,.1f}{per_batch})")
    print(f"{args.workload}, batch size {args.batch_size}: overlap on / off = "
          f"{figures['ratio']:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
