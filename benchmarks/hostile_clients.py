"""Hostile ZeroMQ clients against a real server: what they cost everyone else, and the broker.

The fault probe of issue 16 found three ways one client could hurt the server; each part
measures one of them, on one server:

- **flood**: a bare DEALER sends 48 messages of 4,096 requests each (196,608 requests, 1 ms
  deadlines, about 10 MB) as fast as it can and never reads its replies. Since a message may
  hold at most MAX_BATCH_ITEMS requests, the broker refuses each of those whole, cheaply; so
  the same requests are also sent as messages of MAX_BATCH_ITEMS, which the broker must take
  one request at a time. Meanwhile a second client sends one request every PROBE_INTERVAL_S
  to a second model and times each answer: its percentiles without a flood (the baseline, in
  the same run) and under each flood, and whether any worker was replaced (a worker that
  stops hearing the broker's heartbeats exits and is restarted).
- **huge frames**: one body frame of 1 GiB, then four of 512 MB, each from a fresh DEALER;
  the broker's peak RSS while they are sent (libzmq should drop each connection as it reads
  the frame's length).
- **never reads**: a client sends 200,000 requests of 2 KiB and never reads a reply, one
  request a message (as the sync client sends), then in messages of MAX_BATCH_ITEMS; the
  broker's peak RSS meanwhile (the second also shows the read-ahead bound: a number of
  messages, whatever their size).

    python -m benchmarks.hostile_clients [--requests 196608] [--probes 200] [--json PATH]
"""

from __future__ import annotations

import os
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
from zerobatch import run_dir

ECHO_MODEL = os.path.join(ROOT, "benchmarks", "models", "echo")
PROBE_INTERVAL_S = 0.01
FLOOD_REQUESTS = 48 * 4096
#: the probe's flood: messages of this many requests (more than a message may hold)
PROBE_FLOOD_PER_MESSAGE = 4096
MB = 1024 * 1024
HUGE_FRAMES_MB = ((1024,), (512, 512, 512, 512))
UNREAD_REQUESTS = 200_000
UNREAD_BODY = b"r" * 2048
SAMPLE_S = 0.05


def flood_messages(requests: int, per_message: int, model: str = "flooded",
                   body: bytes = b"x" * 16, timeout_ms: int = 1) -> list[list[bytes]]:
    """REQUEST messages of `per_message` requests each, `requests` in all."""
    route = p.encode_route(model, None, timeout_ms)
    meta = p.encode_meta("application/octet-stream")
    messages = []
    for first in range(0, requests, per_message):
        items = []
        for number in range(first, min(first + per_message, requests)):
            items.append(p.encode_request_head(number.to_bytes(4, "little"), route, meta))
            items.append(body)
        messages.append([p.VERSION, p.REQUEST, *items])
    return messages


def dealer(address: str, **options: int) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(address)
    return sock


def probe(address: str, count: int) -> list[float]:
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


def broker_pid(directory: str) -> int:
    pid = run_dir.lock_holder(directory, run_dir.BROKER_LOCK)
    if pid is None:
        raise RuntimeError("no broker is running")
    return pid


def flood_and_probe(address: str, messages: list[list[bytes]], probes: int) -> dict:
    """Send the flood from a DEALER that never reads, then probe at once; figures."""
    flooder = dealer(address, SNDHWM=0)
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


def huge_frames(address: str, pid: int, sizes_mb: tuple[int, ...]) -> float:
    """The broker's peak RSS (MB) while frames of these sizes are sent, one connection each."""
    head = p.encode_request_head(b"big", p.encode_route("probed", None, 0),
                                 p.encode_meta("application/octet-stream"))
    peak_mb = rss_mb(pid)
    for size_mb in sizes_mb:
        body = bytearray(size_mb * MB)
        sender = dealer(address)
        try:
            sender.send_multipart([p.VERSION, p.REQUEST, head, body], copy=False)
            deadline = time.monotonic() + 10
            # until the broker answered or dropped the link and the frame left this socket
            while time.monotonic() < deadline and not sender.poll(SAMPLE_S * 1000):
                peak_mb = max(peak_mb, rss_mb(pid))
                if sender.getsockopt(zmq.EVENTS) & zmq.POLLOUT:
                    break
        finally:
            sender.close()
            del body
        peak_mb = max(peak_mb, rss_mb(pid))
    return peak_mb


def never_reads(address: str, pid: int, per_message: int) -> float:
    """The broker's peak RSS (MB) while a client sends UNREAD_REQUESTS, per_message to a
    message, and reads nothing."""
    lazy = dealer(address, SNDHWM=0, RCVHWM=1, RCVBUF=4096)
    peak_mb = rss_mb(pid)
    try:
        for index, message in enumerate(flood_messages(
                UNREAD_REQUESTS, per_message, model="probed", body=UNREAD_BODY, timeout_ms=0)):
            lazy.send_multipart(message)
            if index % max(1, 1000 // per_message) == 0:
                peak_mb = max(peak_mb, rss_mb(pid))
        settle_until = time.monotonic() + 5
        while time.monotonic() < settle_until:
            peak_mb = max(peak_mb, rss_mb(pid))
            time.sleep(SAMPLE_S)
    finally:
        lazy.close()
    return peak_mb


def run(requests: int, probes: int) -> dict:
    with zerobatch_server({"flooded": ECHO_MODEL, "probed": ECHO_MODEL}, "--frontends", "0",
                          "--batch-size", "8", "--max-batch-delay", "5") as server:
        address = server["client_address"]
        control = server["control_address"]
        pid = broker_pid(server["run_dir"])
        before = worker_pids(control)
        baseline = probe(address, probes)
        figures: dict = {"baseline": {"max_ms": max(baseline) * 1000,
                                      **latency_summary_ms(sorted(baseline))}}
        for name, per_message in (("oversized_messages", PROBE_FLOOD_PER_MESSAGE),
                                  ("full_messages", p.MAX_BATCH_ITEMS)):
            figures[name] = flood_and_probe(
                address, flood_messages(requests, per_message), probes)
        figures["workers_replaced"] = worker_pids(control) != before
        figures["rss_start_mb"] = rss_mb(pid)
        figures["huge_frames_peak_mb"] = {
            " + ".join(f"{size} MB" for size in sizes): huge_frames(address, pid, sizes)
            for sizes in HUGE_FRAMES_MB}
        figures["never_reads_peak_mb"] = {
            str(per_message): never_reads(address, pid, per_message)
            for per_message in (1, p.MAX_BATCH_ITEMS)}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("benchmarks.hostile_clients")
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
    print(f"workers replaced during the floods: {figures['workers_replaced']}")
    print(f"broker RSS before the frames: {figures['rss_start_mb']:.0f} MB")
    for label, peak_mb in figures["huge_frames_peak_mb"].items():
        print(f"huge frames ({label}): broker RSS peak {peak_mb:.0f} MB")
    for per_message, peak_mb in figures["never_reads_peak_mb"].items():
        print(f"a client that never reads ({UNREAD_REQUESTS:,} requests of "
              f"{len(UNREAD_BODY)} bytes, {per_message} a message): broker RSS peak "
              f"{peak_mb:.0f} MB")
    write_json(args.json, run_record("hostile_clients", vars(args), figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
