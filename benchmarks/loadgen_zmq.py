"""The ZeroMQ load generator: zerobatch's own AsyncClient against a broker, closed or open
loop (the modes and the window are benchmarks.loadgen's)."""

from __future__ import annotations

import asyncio
import math
import time

from benchmarks.loadgen import SWEEP_S, Arrivals, LoadResult, Meter, check_mode, run_on_uvloop

__all__ = ["run_zmq", "run_zmq_async"]


async def run_zmq_async(address: str, model: str, body: bytes, *,
                        concurrency: int | None = None, rate: float | None = None,
                        duration_s: float, max_requests: int, warmup_s: float = 0.5,
                        timeout_ms: int = 10000, deadline_ms: float | None = None,
                        max_in_flight: int = 10000) -> LoadResult:
    """run_zmq inside a running event loop."""
    from zerobatch.api.aio_client import AsyncClient

    mode = check_mode(concurrency, rate, max_requests)
    meter = Meter(mode, duration_s, warmup_s, max_requests, deadline_ms)
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
        loop.call_later(SWEEP_S, sweep)

    tasks: set[asyncio.Task] = set()
    arrivals: Arrivals | None = None
    try:
        if concurrency is not None:
            tasks.update(loop.create_task(caller()) for _ in range(concurrency))
        else:
            arrivals = Arrivals(meter, rate, dispatch, loop)
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
    return run_on_uvloop(run_zmq_async(address, model, body, concurrency=concurrency, rate=rate,
                              duration_s=duration_s, max_requests=max_requests,
                              warmup_s=warmup_s, timeout_ms=timeout_ms,
                              deadline_ms=deadline_ms, max_in_flight=max_in_flight))
