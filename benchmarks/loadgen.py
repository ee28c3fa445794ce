"""The load generators: HTTP (our own asyncio client) and ZeroMQ (our AsyncClient), each in
two modes, and the one result type every driver returns (wrk's too, built in benchmarks.wrk).

Modes. Closed loop (`concurrency`): that many callers, each sending its next request when the
previous one is answered — the usual "requests/s at concurrency N". Open loop (`rate`):
arrivals at a fixed rate whatever the server does, each latency measured from the INTENDED
arrival time, so a server that stalls is charged for every request it made wait (no
coordinated omission); this is how overload is measured honestly.

Window. The first `warmup_s` is not measured. A request belongs to the measured window when
its (intended) send time falls in it, and is followed to its answer or its timeout after the
window closes, so slow answers are never dropped from the tail. Every run is bounded: in
time (warm-up + duration + one request timeout, then everything is aborted), and in count
(at most `max_requests` during the warm-up and at most `max_requests` in the window).

Why our own HTTP client: on a 2-core machine the generator competes with the server for the
same cores, so every µs it spends is taken from the figure it measures. Here a
connection is an asyncio Protocol: the request bytes are encoded once, a response is parsed
in data_received (status, Content-Length or chunked, Connection: close) and, in closed loop,
the next request is written from that same callback: no task, future or timer per request.
Request timeouts are enforced by one sweep over the connections every few tens of ms.
Measured against bare Falcon on uvicorn: about 12 µs of CPU per request, wrk about 16.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from benchmarks.histogram import Histogram
from benchmarks.wrk import wrk_available, wrk_run

__all__ = ["HttpTarget", "LoadResult", "run_http", "run_http_async", "run_wrk", "run_zmq",
           "run_zmq_async", "wrk_available"]

_MAX_HEAD_BYTES = 65536
_SWEEP_S = 0.02
_RECONNECT_S = 0.01


@dataclass
class LoadResult:
    """What one load run measured; `to_dict()` is its JSON record."""

    driver: str                     # "http" (ours), "wrk", "zmq"
    mode: str                       # "closed" | "open"
    concurrency: int | None
    rate: float | None              # arrivals per second (open loop)
    duration_s: float               # the measured window (after warm-up)
    sent: int                       # requests of the window: sent == ok + sum(errors)
    ok: int                         # 2xx (HTTP) / a reply (ZeroMQ)
    errors: dict[str, int]          # by HTTP status, ZeroMQ error type, or client-side
    latency: Histogram              # ok answers, µs (from the intended send in open loop)
    error_latency: Histogram        # error answers, µs
    deadline_ms: float | None = None
    within_deadline: int | None = None   # ok answers with latency <= deadline_ms
    client_cpu_us_per_request: float | None = None  # the generator's own CPU, whole run
    histogram_approximate: bool = False  # True when rebuilt from percentiles (wrk)
    #: error_latency split by error key, so that e.g. refusals (503) and expiries (504) have
    #: their own percentiles; empty for wrk
    error_latency_by_key: dict[str, Histogram] = field(default_factory=dict)

    def rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("latency", "error_latency", "error_latency_by_key")}
        data["errors"] = dict(self.errors)
        data["rps"] = self.rps()
        data["latency"] = self.latency.summary_ms()
        data["error_latency"] = self.error_latency.summary_ms()
        data["latency_hist"] = self.latency.to_dict()
        data["error_latency_hist"] = self.error_latency.to_dict()
        data["error_latency_by_key"] = {key: histogram.summary_ms() for key, histogram
                                        in self.error_latency_by_key.items()}
        data["error_latency_by_key_hist"] = {key: histogram.to_dict() for key, histogram
                                             in self.error_latency_by_key.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadResult:
        names = {f.name for f in fields(cls)} - {"latency", "error_latency",
                                                 "error_latency_by_key"}
        by_key = {key: Histogram.from_dict(hist) for key, hist
                  in data.get("error_latency_by_key_hist", {}).items()}
        return cls(**{k: v for k, v in data.items() if k in names},
                   latency=Histogram.from_dict(data["latency_hist"]),
                   error_latency=Histogram.from_dict(data["error_latency_hist"]),
                   error_latency_by_key=by_key)


@dataclass(frozen=True)
class HttpTarget:
    host: str                       # "127.0.0.1"
    port: int
    path: str                       # "/predictions/echo"
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def request_bytes(self) -> bytes:
        """The whole POST, encoded once for every request of a run."""
        given = {name.lower() for name in self.headers}
        lines = [f"POST {self.path} HTTP/1.1"]
        if "host" not in given:
            lines.append(f"Host: {self.host}:{self.port}")
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if "content-length" not in given:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + bytes(self.body)


def _check_mode(concurrency: int | None, rate: float | None, max_requests: int) -> str:
    if (concurrency is None) == (rate is None):
        raise ValueError("give exactly one of concurrency (closed loop) or rate (open loop)")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, not {concurrency}")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 arrivals/s, not {rate}")
    if max_requests < 1:
        raise ValueError(f"max_requests must be >= 1, not {max_requests}")
    return "closed" if concurrency is not None else "open"


def _run(coro: Any) -> Any:
    """Run a coroutine on uvloop when it is importable (as the servers under test do)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


class _Meter:
    """The counters of a run and its window: what every driver's loop shares."""

    def __init__(self, mode: str, duration_s: float, warmup_s: float, max_requests: int,
                 deadline_ms: float | None) -> None:
        now_ns = time.monotonic_ns()
        self.mode = mode
        self.start_ns = now_ns
        self.window_start_ns = now_ns + int(warmup_s * 1e9)
        self.window_end_ns = self.window_start_ns + int(duration_s * 1e9)
        self.max_requests = max_requests
        self.warmup_sent = 0
        self.sent = 0
        self.ok = 0
        self.within = 0
        self.deadline_us = None if deadline_ms is None else deadline_ms * 1000
        self.errors: dict[str, int] = {}
        self.latency = Histogram()
        self.error_latency = Histogram()
        self.error_latency_by_key: dict[str, Histogram] = {}
        self.answered = 0               # every answer of the run, warm-up and drain included
        self.in_flight = 0
        self.stopped = False
        self.count_limited = False
        self.last_answer_ns = 0
        self.cpu_start_s = time.process_time()

    def admit(self, at_ns: int) -> int:
        """Whether a request (intended) at at_ns may go: 1 measured, 0 warm-up, -1 no more
        (the run stops sending)."""
        if at_ns >= self.window_start_ns:
            if at_ns >= self.window_end_ns:
                self.stopped = True
                return -1
            if self.sent >= self.max_requests:
                self.stopped = self.count_limited = True
                return -1
            self.sent += 1
            return 1
        if self.warmup_sent >= self.max_requests:
            return -1
        self.warmup_sent += 1
        return 0

    def answer(self, measured: int, key: str | None, latency_us: int, now_ns: int) -> None:
        """Count one answer: key None is a success, else the error's name."""
        self.answered += 1
        if not measured:
            return
        self.last_answer_ns = now_ns
        if key is None:
            self.ok += 1
            self.latency.record(latency_us)
            if self.deadline_us is not None and latency_us <= self.deadline_us:
                self.within += 1
        else:
            self.errors[key] = self.errors.get(key, 0) + 1
            self.error_latency.record(latency_us)
            by_key = self.error_latency_by_key.get(key)
            if by_key is None:
                by_key = self.error_latency_by_key[key] = Histogram()
            by_key.record(latency_us)

    def fail(self, measured: int, key: str) -> None:
        """Count a request that got no answer (no connection, timed out, no room)."""
        if measured:
            self.errors[key] = self.errors.get(key, 0) + 1

    def result(self, driver: str, concurrency: int | None, rate: float | None,
               duration_s: float, deadline_ms: float | None) -> LoadResult:
        if self.count_limited:  # the window closed when the count ran out
            if rate is not None:
                duration_s = self.sent / rate
            else:
                duration_s = max(1e-9, (self.last_answer_ns - self.window_start_ns) / 1e9)
        cpu_s = time.process_time() - self.cpu_start_s
        return LoadResult(
            driver=driver, mode=self.mode, concurrency=concurrency, rate=rate,
            duration_s=duration_s, sent=self.sent, ok=self.ok, errors=dict(self.errors),
            latency=self.latency, error_latency=self.error_latency,
            error_latency_by_key=self.error_latency_by_key, deadline_ms=deadline_ms,
            within_deadline=None if deadline_ms is None else self.within,
            client_cpu_us_per_request=cpu_s * 1e6 / self.answered if self.answered else None)


class _Arrivals:
    """Open loop: arrival i is due at start + i / rate, and dispatch(intended_ns, measured)
    sends it whenever this notices it is due: on a timer, and on every answer (cheap, and
    prompt under load). The timer never waits less than 1 ms: event loops keep time in
    milliseconds, and a shorter wait would spin a core the server needs. An arrival is
    therefore sent up to ~1 ms late, and that lateness counts in its latency, never hidden."""

    def __init__(self, meter: _Meter, rate: float, dispatch: Callable[[int, int], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.meter = meter
        self.period_ns = 1e9 / rate
        self.dispatch = dispatch
        self.loop = loop
        self.index = 0
        self.due_ns = meter.start_ns
        loop.call_soon(self.on_timer)

    def on_timer(self) -> None:
        now_ns = self.poll(time.monotonic_ns())
        if not self.meter.stopped:
            self.loop.call_later(max(0.001, (self.due_ns - now_ns) / 1e9), self.on_timer)

    def poll(self, now_ns: int) -> int:
        """Dispatch every arrival due by now_ns."""
        meter = self.meter
        if meter.stopped:
            return now_ns
        due_ns = self.due_ns
        index = self.index
        while due_ns <= now_ns:
            measured = meter.admit(due_ns)
            if measured >= 0:
                self.dispatch(due_ns, measured)
            elif meter.stopped:
                break
            index += 1
            due_ns = meter.start_ns + int(index * self.period_ns)
        self.index, self.due_ns = index, due_ns
        return now_ns


# --------------------------------------------------------------------------- HTTP

_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _UNTIL_CLOSE = range(6)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: writes the pre-encoded request, parses the response."""

    __slots__ = ("run", "transport", "buffer", "phase", "remaining", "status", "closing",
                 "sent_ns", "measured", "busy")

    def __init__(self, run: _HttpRun) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.phase = _HEAD
        self.remaining = 0
        self.status = 0
        self.closing = False
        self.sent_ns = 0
        self.measured = 0
        self.busy = False

    def send(self, intended_ns: int, measured: int) -> None:
        self.sent_ns = intended_ns
        self.measured = measured
        self.busy = True
        self.run.meter.in_flight += 1
        self.transport.write(self.run.request)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy and self.phase == _UNTIL_CLOSE:  # a body delimited by the close
            self.finished()
        self.run.lost(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parse(data)
        except ValueError:  # a status or a length that is not a number
            self.run.broken(self, "bad-response")

    def parse(self, data: bytes) -> None:
        if self.buffer:
            data = self.buffer + data
            self.buffer = b""
        pos = 0
        end = len(data)
        while pos < end:
            phase = self.phase
            if phase == _BODY or phase == _CHUNK_DATA:
                left = end - pos
                if left < self.remaining:
                    self.remaining -= left
                    return
                pos += self.remaining
                if phase == _BODY:
                    self.finished()
                else:
                    self.phase = _CHUNK_SIZE
            elif phase == _HEAD:
                head_end = data.find(b"\r\n\r\n", pos)
                if head_end < 0:
                    self.keep(data, pos)
                    return
                self.head(data[pos:head_end])
                pos = head_end + 4
            elif phase == _CHUNK_SIZE or phase == _TRAILER:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self.keep(data, pos)
                    return
                line = data[pos:eol]
                pos = eol + 2
                if phase == _TRAILER:
                    if not line:
                        self.finished()
                    continue
                size = int(line.split(b";", 1)[0], 16)
                if size:
                    self.phase, self.remaining = _CHUNK_DATA, size + 2
                else:
                    self.phase = _TRAILER
            else:  # _UNTIL_CLOSE: the rest of the stream is the body
                return

    def keep(self, data: bytes, pos: int) -> None:
        self.buffer = data[pos:]
        if len(self.buffer) > _MAX_HEAD_BYTES:
            self.run.broken(self, "bad-response")

    def head(self, head: bytes) -> None:
        """Parse a status line and the few headers that frame the body."""
        if head[:5] != b"HTTP/":
            self.run.broken(self, "bad-response")
            return
        self.status = status = int(head[9:12])
        lower = head.lower()
        self.closing = b"\nconnection: close" in lower
        length_at = lower.find(b"\ncontent-length:")
        if 100 <= status < 200:
            return  # an interim response: the real one follows
        if length_at >= 0:
            line_end = lower.find(b"\r", length_at + 16)
            self.remaining = int(lower[length_at + 16:line_end if line_end >= 0 else None])
            self.phase = _BODY
            if not self.remaining:
                self.finished()
        elif b"\ntransfer-encoding:" in lower and b"chunked" in lower:
            self.phase = _CHUNK_SIZE
        elif status == 204 or status == 304:
            self.finished()
        else:
            self.phase = _UNTIL_CLOSE
            self.closing = True

    def finished(self) -> None:
        self.phase = _HEAD
        self.busy = False
        self.run.answered(self)


class _HttpRun:
    """The connections of one HTTP run and what they do when answered or lost."""

    def __init__(self, target: HttpTarget, meter: _Meter, concurrency: int | None,
                 timeout_s: float, max_connections: int) -> None:
        self.target = target
        self.request = target.request_bytes()
        self.meter = meter
        self.closed_loop = concurrency is not None
        self.timeout_ns = int(timeout_s * 1e9)
        self.max_connections = concurrency if concurrency is not None else max_connections
        self.connections: set[_Connection] = set()
        self.idle: list[_Connection] = []
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()
        self.arrivals: _Arrivals | None = None

    # the request path ---------------------------------------------------------------

    def answered(self, connection: _Connection) -> None:
        meter = self.meter
        meter.in_flight -= 1
        now_ns = time.monotonic_ns()
        status = connection.status
        meter.answer(connection.measured, None if 200 <= status < 300 else str(status),
                     (now_ns - connection.sent_ns) // 1000, now_ns)
        if connection.closing:  # lost() replaces it
            if connection.transport is not None:
                connection.transport.close()
        else:
            self.reuse(connection, now_ns)
        arrivals = self.arrivals
        if arrivals is not None and now_ns >= arrivals.due_ns:
            arrivals.poll(now_ns)

    def reuse(self, connection: _Connection, now_ns: int | None = None) -> None:
        """A connection is free: closed loop sends its next request, open loop parks it."""
        if self.closed_loop:
            if now_ns is None:
                now_ns = time.monotonic_ns()
            measured = self.meter.admit(now_ns)
            if measured >= 0:
                connection.send(now_ns, measured)
                return
            if not self.meter.stopped:  # the warm-up's count is spent: wait for the window
                self.loop.call_later((self.meter.window_start_ns - now_ns) / 1e9, self.reuse,
                                     connection)
                return
        else:
            self.idle.append(connection)
        self.check_done()

    def dispatch(self, intended_ns: int, measured: int) -> None:
        """Open loop: an arrival goes out on an idle connection, a new one, or nowhere."""
        idle = self.idle
        while idle and idle[-1].transport.is_closing():  # the server closed it meanwhile
            idle.pop()
        if idle:
            idle.pop().send(intended_ns, measured)
        elif len(self.connections) < self.max_connections:
            self.open(intended_ns, measured)
        else:
            self.meter.fail(measured, "backlog")

    def open(self, intended_ns: int | None, measured: int) -> None:
        """A new connection, reserved now; it sends the given request once connected."""
        connection = _Connection(self)
        self.connections.add(connection)
        if intended_ns is not None:
            connection.sent_ns, connection.measured, connection.busy = intended_ns, measured, True
            self.meter.in_flight += 1
        self.loop.create_task(self.connect(connection))

    async def connect(self, connection: _Connection) -> None:
        try:
            await self.loop.create_connection(lambda: connection, self.target.host,
                                              self.target.port)
        except OSError:
            self.connections.discard(connection)
            if connection.busy:
                connection.busy = False
                self.meter.in_flight -= 1
                self.meter.fail(connection.measured, "connect")
            if self.closed_loop:  # keep the slot: try again shortly
                self.loop.call_later(_RECONNECT_S, self.replace)
            self.check_done()
            return
        if connection.busy:
            connection.transport.write(self.request)
        elif self.closed_loop:
            self.reuse(connection)
        else:
            self.idle.append(connection)

    def replace(self) -> None:
        """Closed loop: a lost connection's slot gets a new connection and request."""
        if self.done.done():
            return
        now_ns = time.monotonic_ns()
        measured = self.meter.admit(now_ns)
        if measured >= 0:
            self.open(now_ns, measured)
        elif not self.meter.stopped:  # the warm-up's count is spent: connect, then wait
            self.open(None, 0)
        else:
            self.check_done()

    def lost(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)
        if connection.busy:
            connection.busy = False
            self.meter.in_flight -= 1
            self.meter.fail(connection.measured, "closed")
        if self.closed_loop and not self.done.done():
            self.replace()
        else:
            self.check_done()

    def broken(self, connection: _Connection, key: str) -> None:
        """A response that cannot be parsed: count it and drop the connection."""
        if connection.busy:
            connection.busy = False
            self.meter.in_flight -= 1
            self.meter.fail(connection.measured, key)
        connection.closing = True
        connection.phase = _UNTIL_CLOSE  # ignore whatever else arrives
        if connection.transport is not None:
            connection.transport.abort()

    def check_done(self) -> None:
        if self.meter.stopped and not self.meter.in_flight and not self.done.done():
            self.done.set_result(None)

    # the clock ------------------------------------------------------------------------

    def sweep(self) -> None:
        """Every few ms: time out overdue requests, close the window when it has passed."""
        if self.done.done():
            return
        now_ns = time.monotonic_ns()
        meter = self.meter
        if now_ns >= meter.window_end_ns:
            meter.stopped = True
        for connection in list(self.connections):
            if connection.busy and now_ns - connection.sent_ns > self.timeout_ns:
                connection.busy = False
                meter.in_flight -= 1
                meter.fail(connection.measured, "client-timeout")
                connection.closing = True
                if connection.transport is not None:
                    connection.transport.abort()  # lost() replaces it
        self.check_done()
        self.loop.call_later(_SWEEP_S, self.sweep)

    def close(self) -> None:
        """Abort every connection; whatever was still waiting timed out."""
        for connection in list(self.connections):
            if connection.busy:
                connection.busy = False
                self.meter.in_flight -= 1
                self.meter.fail(connection.measured, "client-timeout")
            if connection.transport is not None:
                connection.transport.abort()
        self.connections.clear()
        self.idle.clear()


async def run_http_async(target: HttpTarget, *, concurrency: int | None = None,
                         rate: float | None = None, duration_s: float, max_requests: int,
                         warmup_s: float = 0.5, timeout_s: float = 10.0,
                         deadline_ms: float | None = None,
                         max_connections: int = 1024) -> LoadResult:
    """run_http inside a running event loop."""
    mode = _check_mode(concurrency, rate, max_requests)
    meter = _Meter(mode, duration_s, warmup_s, max_requests, deadline_ms)
    run = _HttpRun(target, meter, concurrency, timeout_s, max_connections)
    loop = run.loop
    try:
        if concurrency is not None:
            for _ in range(concurrency):
                run.replace()
        else:
            run.arrivals = _Arrivals(meter, rate, run.dispatch, loop)
        run.sweep()
        limit_s = warmup_s + duration_s + timeout_s + 1.0
        try:
            await asyncio.wait_for(asyncio.shield(run.done), limit_s)
        except asyncio.TimeoutError:
            pass
    finally:
        meter.stopped = True
        if not run.done.done():
            run.done.set_result(None)
        run.close()
        await asyncio.sleep(0)  # let the aborted transports report their loss
    return meter.result("http", concurrency, rate, duration_s, deadline_ms)


def run_http(target: HttpTarget, *, concurrency: int | None = None, rate: float | None = None,
             duration_s: float, max_requests: int, warmup_s: float = 0.5,
             timeout_s: float = 10.0, deadline_ms: float | None = None,
             max_connections: int = 1024) -> LoadResult:
    """POST target.body to target at a fixed concurrency (closed loop) or a fixed arrival
    rate (open loop, at most max_connections connections, the arrivals that find none free
    count as "backlog"). Errors by HTTP status, or "connect", "closed", "client-timeout",
    "backlog", "bad-response"."""
    return _run(run_http_async(target, concurrency=concurrency, rate=rate,
                               duration_s=duration_s, max_requests=max_requests,
                               warmup_s=warmup_s, timeout_s=timeout_s, deadline_ms=deadline_ms,
                               max_connections=max_connections))


# --------------------------------------------------------------------------- ZeroMQ

async def run_zmq_async(address: str, model: str, body: bytes, *,
                        concurrency: int | None = None, rate: float | None = None,
                        duration_s: float, max_requests: int, warmup_s: float = 0.5,
                        timeout_ms: int = 10000, deadline_ms: float | None = None,
                        max_in_flight: int = 10000) -> LoadResult:
    """run_zmq inside a running event loop."""
    from api.aio_client import AsyncClient

    mode = _check_mode(concurrency, rate, max_requests)
    meter = _Meter(mode, duration_s, warmup_s, max_requests, deadline_ms)
    call_timeout_ms = int(timeout_ms if deadline_ms is None
                          else min(timeout_ms, math.ceil(deadline_ms)))
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    client = AsyncClient(address, timeout_ms=call_timeout_ms)
    predict = client.predict
    body = bytes(body)

    def check_done() -> None:
        if meter.stopped and not meter.in_flight and not done.done():
            done.set_result(None)

    async def one(intended_ns: int, measured: int) -> None:
        meter.in_flight += 1
        try:
            await predict(model, body, timeout_ms=call_timeout_ms)
            key = None
        except Exception as exc:  # any failure is counted by its type; the run goes on
            key = type(exc).__name__
        now_ns = time.monotonic_ns()
        meter.in_flight -= 1
        meter.answer(measured, key, (now_ns - intended_ns) // 1000, now_ns)
        if arrivals is not None and now_ns >= arrivals.due_ns:
            arrivals.poll(now_ns)

    async def caller() -> None:
        while not done.done():
            now_ns = time.monotonic_ns()
            measured = meter.admit(now_ns)
            if measured < 0:
                if meter.stopped:
                    break
                # the warm-up's count is spent: wait for the window
                await asyncio.sleep((meter.window_start_ns - now_ns) / 1e9)
                continue
            await one(now_ns, measured)
        check_done()

    async def arrival(intended_ns: int, measured: int) -> None:
        await one(intended_ns, measured)
        check_done()

    def dispatch(intended_ns: int, measured: int) -> None:
        if meter.in_flight >= max_in_flight:
            meter.fail(measured, "backlog")
        else:
            tasks.add(loop.create_task(arrival(intended_ns, measured)))

    def sweep() -> None:
        if done.done():
            return
        if time.monotonic_ns() >= meter.window_end_ns:
            meter.stopped = True
        check_done()
        loop.call_later(_SWEEP_S, sweep)

    tasks: set[asyncio.Task] = set()
    arrivals: _Arrivals | None = None
    try:
        if concurrency is not None:
            tasks.update(loop.create_task(caller()) for _ in range(concurrency))
        else:
            arrivals = _Arrivals(meter, rate, dispatch, loop)
        sweep()
        # every call is bounded by the client's own timer (its timeout plus a grace)
        limit_s = warmup_s + duration_s + call_timeout_ms / 1000 + 3.0
        try:
            await asyncio.wait_for(asyncio.shield(done), limit_s)
        except asyncio.TimeoutError:
            pass
    finally:
        meter.stopped = True
        if not done.done():
            done.set_result(None)
        for task in tasks:
            task.cancel()
        await client.aclose()
        await asyncio.gather(*tasks, return_exceptions=True)
    return meter.result("zmq", concurrency, rate, duration_s, deadline_ms)


def run_zmq(address: str, model: str, body: bytes, *, concurrency: int | None = None,
            rate: float | None = None, duration_s: float, max_requests: int,
            warmup_s: float = 0.5, timeout_ms: int = 10000, deadline_ms: float | None = None,
            max_in_flight: int = 10000) -> LoadResult:
    """Send body to a zerobatch broker's model with api.aio_client.AsyncClient, closed or
    open loop as run_http; each call's timeout is min(timeout_ms, deadline_ms). Errors by
    zerobatch error type ("QueueFull", "DeadlineExceeded", ...), or "backlog" for an arrival
    that finds max_in_flight calls already waiting."""
    return _run(run_zmq_async(address, model, body, concurrency=concurrency, rate=rate,
                              duration_s=duration_s, max_requests=max_requests,
                              warmup_s=warmup_s, timeout_ms=timeout_ms,
                              deadline_ms=deadline_ms, max_in_flight=max_in_flight))


# --------------------------------------------------------------------------- wrk

def run_wrk(target: HttpTarget, *, connections: int, threads: int,
            duration_s: float) -> LoadResult:
    """Drive Debian's wrk (closed loop, `connections` connections over `threads` threads,
    whole seconds, no warm-up of its own). Its latency histogram covers every response, ok
    or not, and is rebuilt from ~110 percentiles that wrk prints: `histogram_approximate`
    is True and error_latency stays empty."""
    figures = wrk_run(target.host, target.port, target.path, target.body, target.headers,
                      connections=connections, threads=threads, duration_s=duration_s)
    return wrk_result(figures, connections)


def wrk_result(figures: dict, connections: int) -> LoadResult:
    """The LoadResult of wrk's figures (benchmarks.wrk.wrk_run's dict)."""
    total = figures["requests"]
    latency = Histogram()
    previous_rank = 0
    for q, value_us in figures["percentiles"]:  # q ascending; value_us: the latency at q
        rank = round(total * q / 100)
        for _ in range(rank - previous_rank):
            latency.record(value_us)
        previous_rank = max(previous_rank, rank)
    statuses = {status: n for status, n in figures["statuses"].items()
                if not 200 <= int(status) < 300}
    errors = {**statuses, **{key: n for key, n in figures["errors"].items() if n}}
    ok = total - sum(statuses.values())
    return LoadResult(
        driver="wrk", mode="closed", concurrency=connections, rate=None,
        duration_s=figures["duration_us"] / 1e6, sent=ok + sum(errors.values()), ok=ok,
        errors=errors, latency=latency, error_latency=Histogram(),
        histogram_approximate=True)
