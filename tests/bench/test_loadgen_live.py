"""The load generators against real servers on loopback: a tiny HTTP server in this process
that answers by path (200, 503, chunked, Connection: close, a body ended by the close, never),
bare Falcon on uvicorn, a real zerobatch server over ZeroMQ, and wrk when installed."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading

import pytest

from benchmarks.common import BENCH_MODELS, free_port, processes, wait_http, zerobatch_server
from benchmarks.loadgen import HttpTarget, LoadResult, run_wrk, wrk_available
from benchmarks.loadgen_http import run_http
from benchmarks.loadgen_zmq import run_zmq

pytestmark = pytest.mark.integration

SHORT = {"duration_s": 0.4, "warmup_s": 0.1, "timeout_s": 2.0}


class _Server(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 server: the answer depends on the path."""

    def __init__(self, stats: dict) -> None:
        self.stats = stats
        self.buffer = b""

    def connection_made(self, transport):
        self.transport = transport
        self.stats["connections"] += 1

    def data_received(self, data):
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < head_end + 4 + length:
                return
            self.buffer = self.buffer[head_end + 4 + length:]
            path = head.split(" ")[1]
            self.stats["requests"] += 1
            self.answer(path)
            if self.transport.is_closing():
                return

    def answer(self, path: str) -> None:
        write = self.transport.write
        if path == "/ok":
            write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello")
        elif path == "/busy":
            write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")
        elif path == "/mixed":
            if next(self.stats["mixed"]) % 2:
                write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            else:
                write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif path == "/chunked":
            write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
            write(b"lo\r\n6;ext=1\r\n world\r\n")
            write(b"0\r\nX-Trailer: 1\r\n\r\n")
        elif path == "/close":
            write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
            self.transport.close()
        elif path == "/eof":
            write(b"HTTP/1.1 200 OK\r\n\r\nthe body runs to the end of the stream")
            self.transport.close()
        elif path == "/hang":
            pass
        else:
            write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture(scope="module")
def tiny_server():
    """The tiny server on its own loop in a thread; yields (port, stats); always stopped."""
    stats = {"connections": 0, "requests": 0, "mixed": itertools.count()}
    loop = asyncio.new_event_loop()
    port = free_port()
    ready = threading.Event()
    holder = {}

    async def serve():
        holder["server"] = await loop.create_server(lambda: _Server(stats), "127.0.0.1", port)
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop)
    assert ready.wait(5)
    try:
        yield port, stats
    finally:
        async def stop():
            holder["server"].close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def target(port: int, path: str) -> HttpTarget:
    return HttpTarget("127.0.0.1", port, path, b"x" * 100,
                      {"Content-Type": "application/octet-stream"})


def balanced(result: LoadResult) -> None:
    """Every request of the window is accounted for exactly once, and the record is JSON."""
    assert result.sent == result.ok + sum(result.errors.values())
    assert result.latency.count == result.ok
    json.dumps(result.to_dict(), allow_nan=True)


def test_closed_loop_counts_ok_answers(tiny_server):
    port, _ = tiny_server
    result = run_http(target(port, "/ok"), concurrency=4, max_requests=100_000, **SHORT)
    balanced(result)
    assert result.mode == "closed" and result.concurrency == 4
    assert result.ok > 0 and not result.errors
    assert result.rps() > 0


def test_errors_are_counted_by_status(tiny_server):
    port, _ = tiny_server
    result = run_http(target(port, "/mixed"), concurrency=2, max_requests=100_000, **SHORT)
    balanced(result)
    assert result.ok > 0
    assert set(result.errors) == {"503"}
    assert result.error_latency.count == result.errors["503"]
    busy = run_http(target(port, "/busy"), concurrency=2, max_requests=100_000, **SHORT)
    assert busy.ok == 0 and busy.errors["503"] == busy.sent > 0


def test_chunked_bodies_keep_the_connection_alive(tiny_server):
    port, stats = tiny_server
    before = stats["connections"]
    result = run_http(target(port, "/chunked"), concurrency=2, max_requests=100_000, **SHORT)
    balanced(result)
    assert result.ok > 10 and not result.errors
    assert stats["connections"] - before == 2  # parsed to the end: the connections were reused


@pytest.mark.parametrize("path", ["/close", "/eof"])
def test_a_server_that_closes_gets_fresh_connections(tiny_server, path):
    port, stats = tiny_server
    before = stats["connections"]
    result = run_http(target(port, path), concurrency=2, max_requests=100_000, **SHORT)
    balanced(result)
    assert result.ok > 2 and not result.errors
    assert stats["connections"] - before > 2


def test_the_count_bounds_the_run(tiny_server):
    port, stats = tiny_server
    before = stats["requests"]
    result = run_http(target(port, "/ok"), concurrency=3, duration_s=30, max_requests=50,
                      warmup_s=0.1, timeout_s=2.0)
    balanced(result)
    assert result.sent == result.ok == 50
    assert result.duration_s < 30  # the window closed when the count ran out
    assert stats["requests"] - before <= 100  # at most max_requests warm-up + 50 measured


def test_open_loop_sends_at_the_rate(tiny_server):
    port, _ = tiny_server
    result = run_http(target(port, "/ok"), rate=500, max_requests=100_000, deadline_ms=1000,
                      **SHORT)
    balanced(result)
    assert result.mode == "open" and result.rate == 500
    assert result.sent == 200  # arrivals are scheduled, whatever the server does: 500/s x 0.4 s
    assert result.ok == 200
    assert result.within_deadline == 200


def test_open_loop_without_free_connections_counts_backlog(tiny_server):
    port, _ = tiny_server
    result = run_http(target(port, "/hang"), rate=200, max_connections=5, duration_s=0.3,
                      warmup_s=0, timeout_s=0.5, max_requests=100_000)
    balanced(result)
    assert result.ok == 0
    assert result.errors["client-timeout"] == 5
    assert result.errors["backlog"] == result.sent - 5


def test_requests_that_hang_time_out(tiny_server):
    port, _ = tiny_server
    result = run_http(target(port, "/hang"), concurrency=2, duration_s=0.3, warmup_s=0,
                      timeout_s=0.2, max_requests=100_000)
    balanced(result)
    assert result.ok == 0 and result.errors["client-timeout"] >= 2


def test_a_closed_port_counts_connect_errors():
    result = run_http(target(free_port(), "/ok"), concurrency=2, max_requests=100_000, **SHORT)
    balanced(result)
    assert result.ok == 0 and result.errors["connect"] > 0


def test_against_bare_falcon_on_uvicorn():
    port = free_port()
    argv = ["-m", "uvicorn", "benchmarks.bare_falcon:app", "--host", "127.0.0.1", "--port",
            str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"]
    with processes(argv):
        wait_http(f"http://127.0.0.1:{port}/ping", timeout_s=20)
        result = run_http(target(port, "/predictions/echo"), concurrency=8,
                          max_requests=100_000, **SHORT)
    balanced(result)
    assert result.ok > 0 and not result.errors


@pytest.fixture(scope="module")
def zerobatch():
    with zerobatch_server({"echo": os.path.join(BENCH_MODELS, "echo")}) as addresses:
        yield addresses["client_address"]


def test_zmq_closed_loop(zerobatch):
    result = run_zmq(zerobatch, "echo", b"x" * 100, concurrency=8, max_requests=100_000,
                     duration_s=0.4, warmup_s=0.1, timeout_ms=2000)
    balanced(result)
    assert result.driver == "zmq" and result.ok > 0 and not result.errors


def test_zmq_open_loop_with_deadline(zerobatch):
    result = run_zmq(zerobatch, "echo", b"x" * 100, rate=300, max_requests=100_000,
                     duration_s=0.4, warmup_s=0.1, timeout_ms=2000, deadline_ms=1000)
    balanced(result)
    assert result.sent == 120 and result.ok == 120
    assert result.within_deadline == 120


def test_zmq_errors_are_counted_by_type(zerobatch):
    result = run_zmq(zerobatch, "no-such-model", b"x", concurrency=2, max_requests=20,
                     duration_s=5, warmup_s=0, timeout_ms=2000)
    balanced(result)
    assert result.ok == 0 and result.errors == {"ModelNotFound": 20}


@pytest.mark.skipif(not wrk_available(), reason="wrk is not installed (apt-get install wrk)")
def test_wrk_counts_statuses(tiny_server):
    port, _ = tiny_server
    result = run_wrk(target(port, "/mixed"), connections=2, threads=1, duration_s=1)
    assert result.sent == result.ok + sum(result.errors.values())
    assert result.driver == "wrk" and result.histogram_approximate
    assert result.ok > 0 and result.errors.get("503", 0) > 0
    assert result.latency.count == result.ok + result.errors["503"]
    json.dumps(result.to_dict(), allow_nan=True)
