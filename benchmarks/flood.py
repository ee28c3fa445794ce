"""One client floods the broker; how long does another client wait, and do workers survive?

The flood of the fault probe (issue 16): a bare DEALER sends 48 messages of 4,096 requests
each (196,608 requests, 1 ms deadlines, about 10 MB in all) to the client endpoint as fast as
it can, and never reads its replies. Since a message may hold at most MAX_BATCH_ITEMS
requests, the broker refuses each of those whole, cheaply; so the same requests are also sent
as messages of MAX_BATCH_ITEMS, which the broker must take one request at a time. Meanwhile a
second, well-behaved client sends one request every PROBE_INTERVAL_S to a second model and
times each answer. The report gives the probe's latency percentiles without a flood (the
baseline, in the same run) and under each flood, whether any worker was replaced (a worker
that declared the broker lost exits and is restarted), and the broker's RSS.

    python -m benchmarks.flood [--requests 196608] [--probes 200] [--json PATH]
"""

from __future__ import annotations

import os
import threading
import time

import zmq

from benchmarks.common import (
    ROOT,
    at_least,
    bench_parser,
    latency_summary_ms,
    run_record,
    write_json,
    zerobatch_server,
)
from zerobatch import protocol as p

ECHO_MODEL = os.path.join(ROOT, "benchmarks", "models", "echo")
PROBE_INTERVAL_S = 0.01
FLOOD_REQUESTS = 48 * 4096
#: the probe's flood: messages of this many requests (more than a message may hold)
PROBE_FLOOD_PER_MESSAGE = 4096


def flood_messages(requests: int, per_message: int, body: bytes = b"x" * 16
                   ) -> list[list[bytes]]:
    """REQUEST messages of `per_message` requests each, `requests` in all, 1 ms deadlines."""
    route = p.encode_route("flooded", None, 1)
    meta = p.encode_meta("application/octet-stream")
    messages = []
    for first in range(0, requests, per_message):
        items = []
        for number in range(first, min(first + per_message, requests)):
            items.append(p.encode_request_head(number.to_bytes(4, "little"), route, meta))
            items.append(body)
        messages.append([p.VERSION, p.REQUEST, *items])
    return messages


def probe(address: str, count: int, stop: threading.Event | None = None) -> list[float]:
    """Latencies (s) of `count` requests to `probed`, one every PROBE_INTERVAL_S."""
    from zerobatch.api.client import Client

    latencies = []
    with Client(address, timeout_ms=10_000) as client:
        for _ in range(count):
            started = time.perf_counter()
            client.predict("probed", b"ping")
            latencies.append(time.perf_counter() - started)
            time.sleep(PROBE_INTERVAL_S)
    return latencies


def worker_pids(control_address: str) -> dict[str, list[int]]:
    from zerobatch.api.client import Client

    with Client(control_address, timeout_ms=5000) as client:
        described = client.control("describe")
    return {m["modelName"]: sorted(w["pid"] for w in m["workers"])
            for m in described["models"]}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def broker_pid(run_dir: str) -> int:
    from zerobatch.api.cli import running_pid

    pid = running_pid(run_dir)
    if pid is None:
        raise RuntimeError("no broker is running")
    return pid


def flood_and_probe(address: str, messages: list[list[bytes]], probes: int) -> dict:
    """Send the flood from a DEALER that never reads, then probe at once; figures."""
    flooder = zmq.Context.instance().socket(zmq.DEALER)
    flooder.setsockopt(zmq.LINGER, 0)
    flooder.setsockopt(zmq.SNDHWM, 0)
    flooder.connect(address)
    try:
        started = time.perf_counter()
        for message in messages:
            flooder.send_multipart(message)
        send_s = time.perf_counter() - started
        latencies = probe(address, probes)
    finally:
        flooder.close()
    return {"messages": len(messages), "flood_send_s": send_s,
            "max_ms": max(latencies) * 1000, **latency_summary_ms(sorted(latencies))}


def run(requests: int, probes: int) -> dict:
    with zerobatch_server({"flooded": ECHO_MODEL, "probed": ECHO_MODEL}, "--frontends", "0",
                          "--batch-size", "8", "--max-batch-delay", "5") as server:
        address = server["client_address"]
        control = server["control_address"]
        pid = broker_pid(server["run_dir"])
        before = worker_pids(control)
        baseline = probe(address, probes)
        figures = {"baseline": {"max_ms": max(baseline) * 1000,
                                **latency_summary_ms(sorted(baseline))}}
        for name, per_message in (("oversized_messages", PROBE_FLOOD_PER_MESSAGE),
                                  ("full_messages", p.MAX_BATCH_ITEMS)):
            figures[name] = flood_and_probe(
                address, flood_messages(requests, per_message), probes)
        figures["broker_rss_mb"] = rss_mb(pid)
        after = worker_pids(control)
    figures.update(workers_before=before, workers_after=after, workers_replaced=before != after)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("benchmarks.flood")
    parser.add_argument("--requests", type=at_least(1), default=FLOOD_REQUESTS)
    parser.add_argument("--probes", type=at_least(10), default=200)
    args = parser.parse_args(argv)
    figures = run(args.requests, args.probes)
    print(f"flood: {args.requests:,} requests (1 ms deadlines), never read; a probe client "
          f"sends {args.probes} requests to another model, one every "
          f"{PROBE_INTERVAL_S * 1000:g} ms")
    for name, label in (("baseline", "no flood"),
                        ("oversized_messages", f"{PROBE_FLOOD_PER_MESSAGE}/message"),
                        ("full_messages", f"{p.MAX_BATCH_ITEMS}/message")):
        row = figures[name]
        sent = (f"  ({row['messages']} messages sent in {row['flood_send_s']:.2f} s)"
                if "messages" in row else "")
        print(f"probe, {label:>14}: p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms"
              f"  max {row['max_ms']:7.2f} ms{sent}")
    print(f"workers replaced during the floods: {figures['workers_replaced']}  "
          f"(before {figures['workers_before']}, after {figures['workers_after']})")
    print(f"broker RSS after the flood: {figures['broker_rss_mb']:.0f} MB")
    write_json(args.json, run_record("flood", vars(args), figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
