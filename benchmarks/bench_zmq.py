"""The ZeroMQ path against the floor, side by side in one run.

    python -m benchmarks.bench_zmq [--rounds 3] [--latency-requests 3000]
                                   [--throughput-requests 30000] [--json results/zmq.json]

Three systems answer a 100-byte echo over ipc, in alternating rounds so that machine noise
hits all of them alike:
  relay  a bare Python relay, client DEALER -> ROUTER -> DEALER -> echo DEALER
         (benchmarks/floor.py), forwarding each message as it comes
  proxy  libzmq's C zmq_proxy in the relay's place
  ours   a real zerobatch server (broker + one echo worker, batch size 8, adaptive) driven by
         our own `api.client.Client`
For each: p50/p99 round trip with one request in flight, and requests/s with 64 in flight;
and, during the one-in-flight phase, the CPU time per request of each process (user + system
from /proc, libzmq I/O threads included; the client is this process). With one request in
flight every process's CPU is on the critical path, so those figures say where a slower
round trip goes. Figures are medians over the rounds; ratios are ours against the relay.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import zmq

from benchmarks.common import (
    BENCH_MODELS,
    latency_summary_ms,
    medians,
    processes,
    run_record,
    write_json,
    zerobatch_server,
)
from benchmarks.cpu_per_request import cpu_seconds, processes_of

PAYLOAD = b"x" * 100
IN_FLIGHT = 64
MAX_PHASE_S = 60.0


class RawClient:
    """A bare DEALER: what the floor's clients use."""

    def __init__(self, address: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVTIMEO, 5000)
        self.socket.connect(address)
        self.counter = 0

    def send(self) -> None:
        self.counter += 1
        self.socket.send_multipart([self.counter.to_bytes(8, "little"), PAYLOAD])

    def recv(self) -> None:
        try:
            self.socket.recv_multipart()
        except zmq.Again:
            raise TimeoutError("the floor did not answer within 5 s") from None

    def close(self) -> None:
        self.socket.close()
        self.context.term()


class OurClient:
    """zerobatch's client, driven the same way."""

    def __init__(self, address: str) -> None:
        from zerobatch.api.client import Client

        self.client = Client(address)
        self.pending: list = []

    def send(self) -> None:
        self.pending.append(self.client.submit("echo", PAYLOAD, timeout_ms=5000))

    def recv(self) -> None:
        self.pending.pop(0).result()

    def close(self) -> None:
        self.client.close()


def measure(client, latency_requests: int, throughput_requests: int,
            pids: dict[str, int]) -> dict:
    """The figures of one system; pids names its server-side processes (for cpu_*_us)."""
    for _ in range(200):  # warm up: connections, caches, the worker's first batches
        client.send()
        client.recv()
    latencies = []
    clock = time.perf_counter
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client_before = time.process_time()
    for _ in range(latency_requests):
        started = clock()
        client.send()
        client.recv()
        latencies.append(clock() - started)
    figures = latency_summary_ms(latencies)
    for name, pid in pids.items():
        figures[f"cpu_{name}_us"] = (cpu_seconds(pid) - cpu_before[name]) / latency_requests * 1e6
    figures["cpu_client_us"] = (time.process_time() - client_before) / latency_requests * 1e6

    started = clock()
    deadline = started + MAX_PHASE_S
    sent = min(IN_FLIGHT, throughput_requests)
    for _ in range(sent):
        client.send()
    done = 0
    while done < sent and clock() < deadline:
        client.recv()
        done += 1
        if sent < throughput_requests:
            client.send()
            sent += 1
    figures["rps_64"] = done / (clock() - started)
    return figures


def run_floor(kind: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="zbf") as tmp:
        front, back = f"ipc://{tmp}/front", f"ipc://{tmp}/back"
        server = ["-m", "benchmarks.floor", kind, front, back]
        echo = ["-m", "benchmarks.floor", "echo", back]
        with processes(server, echo) as (server_process, echo_process):
            client = RawClient(front)
            try:
                return measure(client, args.latency_requests, args.throughput_requests,
                               {kind: server_process.pid, "echo": echo_process.pid})
            finally:
                client.close()


def run_ours(args: argparse.Namespace) -> dict:
    flags = ["--frontends", "0", "--batch-size", "8", "--max-batch-delay", "5",
             "--max-queue", "1000"]
    with zerobatch_server({"echo": os.path.join(BENCH_MODELS, "echo")}, *flags) as server:
        pids = {role: pid for pid, role in processes_of(server["run_dir"]).items()}
        client = OurClient(server["client_address"])
        try:
            return measure(client, args.latency_requests, args.throughput_requests, pids)
        finally:
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_zmq")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-requests", type=int, default=3000)
    parser.add_argument("--throughput-requests", type=int, default=30000)
    parser.add_argument("--json", default=None, help="write the run record here")
    args = parser.parse_args(argv)

    runs: dict[str, list[dict]] = {"relay": [], "proxy": [], "ours": []}
    for round_index in range(args.rounds):
        for kind in ("relay", "proxy", "ours"):
            figures = run_ours(args) if kind == "ours" else run_floor(kind, args)
            runs[kind].append(figures)
            print(f"round {round_index + 1} {kind:5s}: p50 {figures['p50_ms']:.3f} ms  "
                  f"p99 {figures['p99_ms']:.3f} ms  {figures['rps_64']:,.0f} req/s @64",
                  flush=True)
    median = medians(runs)
    ratios = {
        "p50_ours_over_relay": median["ours"]["p50_ms"] / median["relay"]["p50_ms"],
        "rps64_ours_over_relay": median["ours"]["rps_64"] / median["relay"]["rps_64"],
    }
    print("\nmedians over rounds (1 in flight: p50/p99 ms; 64 in flight: req/s)")
    for kind, figures in median.items():
        print(f"  {kind:5s}  p50 {figures['p50_ms']:.3f}  p99 {figures['p99_ms']:.3f}  "
              f"{figures['rps_64']:,.0f} req/s")
    print("CPU per request with 1 in flight (µs; client = this process)")
    for kind, figures in median.items():
        cpu = ", ".join(f"{key[4:-3]} {value:.0f}" for key, value in figures.items()
                        if key.startswith("cpu_"))
        print(f"  {kind:5s}  {cpu}")
    print(f"  ours/relay: p50 x{ratios['p50_ours_over_relay']:.2f} (target <= 1.25), "
          f"throughput x{ratios['rps64_ours_over_relay']:.2f} (target >= 1.0)")
    write_json(args.json, run_record("zmq", vars(args), {"median": median, "ratios": ratios,
                                                         "rounds": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
