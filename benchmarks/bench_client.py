"""The sync client's own Python cost per request, with its socket replaced by an in-process echo.

    python -m benchmarks.bench_client [--requests 20000] [--in-flight 64] [--rounds 7]
                                      [--tree DIR --module api.client] [--json PATH]

Everything but the socket runs: building and encoding each request, filing the replies,
turning them into Reply objects. The fake answers every request sent so far in one REPLIES
message each time the client waits, as a broker does under load, so no syscall or other
process is timed. Prints the best and the median round in microseconds per request.

`--tree DIR --module api.client` times another checkout's client instead (put first on
sys.path; an older checkout's module is `api.client`), for a comparison run back to back
with this tree's: the machine moves too much between runs for figures of separate runs.
"""

from __future__ import annotations

import importlib
import statistics
import sys
import time
from collections.abc import Callable

from benchmarks.common import at_least, bench_parser, run_record, write_json

PAYLOAD = b"x" * 100


def load_client_module(tree: str | None, module: str):
    if tree:
        sys.path.insert(0, tree)
    return importlib.import_module(module)


def install_echo(client_module) -> Callable[[], None]:
    """Replace the module's send/receive with an echo that answers all it was sent; the
    function that puts the real ones back (so that a caller in the same process, such as
    the lab's tests, gets a working client again)."""
    real = client_module.send_frames, client_module.recv_bytes
    from zerobatch import protocol  # the checkout's own, when --tree is given

    reply_meta = protocol.encode_reply_meta(200, "application/octet-stream")
    sent: list[list] = []

    def send_frames(_socket, frames) -> None:
        sent.append(frames)

    def recv_bytes(_socket) -> list:
        out = [protocol.VERSION, protocol.REPLIES]
        for frames in sent:
            items = frames[2:]
            for index in range(0, len(items), 2):
                rid_part = protocol.split_request_head(items[index])[0]
                out += [rid_part + protocol.REPLY + reply_meta, items[index + 1]]
        sent.clear()
        return out

    client_module.send_frames = send_frames
    client_module.recv_bytes = recv_bytes

    def restore() -> None:
        client_module.send_frames, client_module.recv_bytes = real
    return restore


def one_round(client, requests: int, in_flight: int) -> float:
    """Microseconds per request with in_flight requests always outstanding."""
    started = time.perf_counter()
    pending = [client.submit("echo", PAYLOAD, timeout_ms=5000) for _ in range(in_flight)]
    for _ in range(requests):
        pending.pop(0).result()
        pending.append(client.submit("echo", PAYLOAD, timeout_ms=5000))
    for handle in pending:
        handle.result()
    return (time.perf_counter() - started) / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("benchmarks.bench_client")
    parser.add_argument("--requests", type=at_least(1), default=20000)
    parser.add_argument("--in-flight", type=at_least(1), default=64)
    parser.add_argument("--rounds", type=at_least(1), default=7)
    parser.add_argument("--tree", help="time the client of this checkout instead")
    parser.add_argument("--module", default="zerobatch.api.client",
                        help="the client's module (api.client in an older checkout)")
    args = parser.parse_args(argv)
    client_module = load_client_module(args.tree, args.module)
    restore = install_echo(client_module)
    client = client_module.Client("ipc:///nonexistent/zerobatch-bench-client")
    try:
        one_round(client, min(args.requests, 2000), args.in_flight)  # warm up
        rounds = [one_round(client, args.requests, args.in_flight) for _ in range(args.rounds)]
    finally:
        client.close()
        restore()
    figures = {"best_us": min(rounds), "median_us": statistics.median(rounds), "rounds_us": rounds}
    print(f"{args.module} ({args.tree or 'this tree'}): {figures['best_us']:.2f} us/request "
          f"best, {figures['median_us']:.2f} median, {args.in_flight} in flight")
    write_json(args.json, run_record("bench_client", {
        "requests": args.requests, "in_flight": args.in_flight, "tree": args.tree,
        "module": args.module}, figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
