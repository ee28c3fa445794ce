"""The load generators' common ground: the two modes, the measured window, the target and the
one result type every driver returns (HTTP, ZeroMQ and wrk alike).

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

The drivers: `benchmarks.loadgen_http.run_http` (our own asyncio HTTP/1.1 client),
`benchmarks.loadgen_zmq.run_zmq` (zerobatch's AsyncClient), and `run_wrk` here (Debian's wrk).
This module holds what they share: the modes and the window (`Meter`, `Arrivals`), the
target, and the result.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from benchmarks.histogram import Histogram
from benchmarks.wrk import wrk_available, wrk_run

__all__ = ["HttpTarget", "LoadResult", "run_wrk", "wrk_available", "wrk_result"]

#: how often the drivers look for requests past their timeout and for the window's end
SWEEP_S = 0.02


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


def check_mode(concurrency: int | None, rate: float | None, max_requests: int) -> str:
    if (concurrency is None) == (rate is None):
        raise ValueError("give exactly one of concurrency (closed loop) or rate (open loop)")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, not {concurrency}")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 arrivals/s, not {rate}")
    if max_requests < 1:
        raise ValueError(f"max_requests must be >= 1, not {max_requests}")
    return "closed" if concurrency is not None else "open"


def run_on_uvloop(coro: Any) -> Any:
    """Run a load's coroutine on uvloop when it is importable (as the servers under test do).

    Meanwhile every object this process already holds is frozen out of the garbage collector
    (collected first, outside the load): the harness keeps each finished load's results, and
    a full collection of them in the middle of a load would stall the generator and be
    charged to the server under test as latency (the same reason as zerobatch.gc_policy).
    """
    gc.collect()
    gc.freeze()
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(coro)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    finally:
        gc.unfreeze()


class Meter:
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


class Arrivals:
    """Open loop: arrival i is due at start + i / rate, and dispatch(intended_ns, measured)
    sends it whenever this notices it is due: on a timer, and on every answer (cheap, and
    prompt under load). The timer never waits less than 1 ms: event loops keep time in
    milliseconds, and a shorter wait would spin a core the server needs. An arrival is
    therefore sent up to ~1 ms late, and that lateness counts in its latency, never hidden."""

    def __init__(self, meter: Meter, rate: float, dispatch: Callable[[int, int], None],
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
