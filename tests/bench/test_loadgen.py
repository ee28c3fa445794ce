"""The load generator's parts that need no socket: request encoding, the HTTP response
parser fed in every possible split, the window's admission, results as JSON, wrk's figures."""

from __future__ import annotations

import gc
import json
import math

import pytest

from benchmarks import loadgen, loadgen_http
from benchmarks.histogram import Histogram
from benchmarks.loadgen import HttpTarget, LoadResult, run_on_uvloop, wrk_result
from benchmarks.wrk import PERCENTILES, script_text


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed


class _Run:
    """Stands in for the run that owns a connection: records what the parser reports."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.broken_keys: list[str] = []

    def answered(self, connection) -> None:
        self.statuses.append(connection.status)

    def broken(self, connection, key: str) -> None:
        self.broken_keys.append(key)

    def lost(self, connection) -> None:
        pass


def parse(stream: bytes, split: int | None = None, close: bool = False) -> _Run:
    """Feed a byte stream to one connection, in pieces of `split` bytes (None: whole)."""
    run = _Run()
    connection = loadgen_http._Connection(run)
    connection.connection_made(_Transport())
    step = split or len(stream)
    for start in range(0, len(stream), step):
        connection.busy = True
        connection.data_received(stream[start:start + step])
    if close:
        connection.connection_lost(None)
    return run


RESPONSES = [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", [200]),
    (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n", [503]),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nTrailer: 1\r\n\r\n", [200]),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", [204]),
    # two answers back to back, the second chunked with an empty trailer section
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
     b"HTTP/1.1 500 Oops\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", [200, 500]),
]


@pytest.mark.parametrize("stream,statuses", RESPONSES)
@pytest.mark.parametrize("split", [None, 1, 2, 7])
def test_responses_are_parsed_in_any_split(stream, statuses, split):
    assert parse(stream, split).statuses == statuses


def test_a_body_ended_by_the_close_completes_on_close():
    stream = b"HTTP/1.1 200 OK\r\n\r\nsome body"
    assert parse(stream).statuses == []
    assert parse(stream, close=True).statuses == [200]


def test_garbage_is_reported_not_raised():
    assert parse(b"SSH-2.0-OpenSSH\r\n\r\n").broken_keys == ["bad-response"]
    assert parse(b"x" * 70_000).broken_keys == ["bad-response"]
    assert parse(b"HTTP/1.1 2x0 OK\r\n\r\n").broken_keys == ["bad-response"]
    assert parse(b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n").broken_keys == [
        "bad-response"]


def test_the_request_is_encoded_once_with_length_and_host():
    target = HttpTarget("127.0.0.1", 8080, "/predictions/echo", b"abc",
                        {"Content-Type": "application/octet-stream"})
    raw = target.request_bytes()
    head, body = raw.split(b"\r\n\r\n")
    assert body == b"abc"
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /predictions/echo HTTP/1.1"
    assert set(lines[1:]) == {b"Host: 127.0.0.1:8080", b"Content-Length: 3",
                              b"Content-Type: application/octet-stream"}


@pytest.mark.parametrize("kwargs", [{}, {"concurrency": 2, "rate": 10.0}, {"concurrency": 0},
                                    {"rate": 0.0}])
def test_exactly_one_mode(kwargs):
    with pytest.raises(ValueError):
        loadgen.check_mode(kwargs.get("concurrency"), kwargs.get("rate"), 10)


def test_the_window_admits_warmup_then_a_bounded_count():
    meter = loadgen.Meter("closed", duration_s=1.0, warmup_s=1.0, max_requests=2,
                           deadline_ms=None)
    start, window = meter.start_ns, meter.window_start_ns
    assert [meter.admit(start), meter.admit(start), meter.admit(start)] == [0, 0, -1]
    assert not meter.stopped  # the warm-up's count is spent, the window has not begun
    assert [meter.admit(window), meter.admit(window)] == [1, 1]
    assert meter.admit(window) == -1 and meter.stopped and meter.count_limited
    late = loadgen.Meter("open", duration_s=1.0, warmup_s=0.0, max_requests=9,
                          deadline_ms=None)
    assert late.admit(late.window_end_ns) == -1 and late.stopped and not late.count_limited


def test_deadline_accounting_counts_ok_answers_in_time():
    meter = loadgen.Meter("open", duration_s=1.0, warmup_s=0.0, max_requests=9,
                           deadline_ms=100)
    for latency_us in (50_000, 100_000, 150_000):
        meter.answer(1, None, latency_us, 0)
    meter.answer(1, "503", 1000, 0)
    meter.answer(0, None, 1, 0)  # warm-up: not counted
    result = meter.result("http", None, 10.0, 1.0, 100)
    assert (result.ok, result.within_deadline, result.errors) == (3, 2, {"503": 1})
    assert result.latency.count == 3 and result.error_latency.count == 1


def test_result_round_trips_through_json():
    latency = Histogram()
    for value in (100, 200, 5000):
        latency.record(value)
    result = LoadResult(driver="http", mode="closed", concurrency=8, rate=None, duration_s=2.0,
                        sent=5, ok=3, errors={"503": 2}, latency=latency,
                        error_latency=Histogram(), deadline_ms=None, within_deadline=None)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["rps"] == 1.5
    assert data["latency"]["count"] == 3 and "latency_hist" in data
    assert math.isnan(data["error_latency"]["p50"])
    back = LoadResult.from_dict(data)
    assert back.to_dict().keys() == result.to_dict().keys()
    assert back.latency.to_dict() == latency.to_dict()
    assert (back.sent, back.ok, back.errors) == (5, 3, {"503": 2})


def test_wrk_figures_become_a_result():
    figures = {"requests": 1000, "duration_us": 2_000_000,
               "errors": {"connect": 0, "read": 3, "write": 0, "client-timeout": 0},
               "statuses": {"200": 900, "503": 100},
               "percentiles": [(q, 1000 if q <= 50 else 3000) for q in PERCENTILES]}
    result = wrk_result(figures, connections=64)
    assert (result.ok, result.errors) == (900, {"503": 100, "read": 3})
    assert result.sent == 1003 and result.rps() == 450.0
    assert result.latency.count == 1000 and result.histogram_approximate
    assert result.latency.percentile(50) == pytest.approx(1000, rel=1e-3)
    assert result.latency.percentile(90) == pytest.approx(3000, rel=1e-3)


def test_wrk_script_escapes_any_bytes():
    text = script_text('/tmp/a "b"\\c', {"Content-Type": 'multipart/form-data; boundary="x"'})
    assert '"/tmp/a \\034b\\034\\092c"' in text
    assert 'wrk.headers["Content-Type"]' in text
    assert "\\034x\\034" in text


def test_a_load_runs_with_the_process_heap_frozen_and_thawed_after():
    async def freeze_count_inside():
        return gc.get_freeze_count()

    assert gc.get_freeze_count() == 0
    assert run_on_uvloop(freeze_count_inside()) > 0  # what the process held, frozen
    assert gc.get_freeze_count() == 0  # and given back to the collector after
