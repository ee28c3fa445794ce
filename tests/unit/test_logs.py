"""zerobatch.logs: the text and JSON log lines every process writes (issue 18)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import threading
import warnings

import pytest

from zerobatch import logs

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) (\w+)\[(\d+)\] (\S+): (.*)$")
ISO_UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def restore_logging(monkeypatch):
    """configure() owns the process's logging: put the root logger, the warnings capture,
    the exception hooks and sys.stdout/sys.stderr back as they were."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    for name in ("stdout", "stderr", "excepthook"):
        monkeypatch.setattr(sys, name, getattr(sys, name))
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(logs, "_configured", None)
    yield
    logging.captureWarnings(False)
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_lines_keep_the_format_of_before(restore_logging):
    stream = io.StringIO()
    logs.configure("info", "text", "broker", stream=stream)
    logging.getLogger("zerobatch.broker").info("model %s registered", "echo/1.0")
    logging.getLogger("zerobatch.broker").debug("not at INFO")
    (line,) = lines(stream)
    level, process, pid, logger, message = TEXT_LINE.match(line).groups()
    assert (level, process, int(pid), logger, message) == (
        "INFO", "broker", os.getpid(), "zerobatch.broker",
        "model echo/1.0 registered")


def test_text_mode_leaves_stdout_and_warnings_alone(restore_logging):
    stdout = sys.stdout
    logs.configure("INFO", "text", "worker", stream=io.StringIO())
    assert sys.stdout is stdout
    assert not isinstance(sys.stderr, logs._LineLogger)


def test_json_lines_carry_the_fields(restore_logging):
    stream = io.StringIO()
    logs.configure(logging.INFO, "json", "frontend", stream=stream)
    logging.getLogger("zerobatch.frontend").warning("two\nlines %d", 7)
    (line,) = lines(stream)  # the newline is escaped: one record, one line
    record = json.loads(line)
    assert ISO_UTC_MS.match(record.pop("time"))
    assert record == {"level": "WARNING", "process": "frontend",
                      "pid": os.getpid(), "logger": "zerobatch.frontend",
                      "message": "two\nlines 7"}


def test_json_time_is_utc_with_milliseconds(restore_logging):
    stream = io.StringIO()
    logs.configure("INFO", "json", "broker", stream=stream)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.created, record.msecs = 1_796_626_367.123, 123.0  # that instant, in epoch seconds
    logging.getLogger().handle(record)
    assert json.loads(lines(stream)[0])["time"] == "2026-12-07T06:52:47.123Z"


def test_json_lines_carry_the_exception_as_text(restore_logging):
    stream = io.StringIO()
    logs.configure("INFO", "json", "worker", stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("zerobatch.worker").exception("handler failed")
    (line,) = lines(stream)
    record = json.loads(line)
    assert record["message"] == "handler failed"
    assert record["level"] == "ERROR"
    assert record["exc_info"].startswith("Traceback (most recent call last):")
    assert record["exc_info"].endswith("RuntimeError: boom")


def test_json_access_lines_nest_the_access_fields(restore_logging):
    stream = io.StringIO()
    logs.configure("INFO", "json", "frontend", stream=stream)
    access = {"time": "t0", "client": "127.0.0.1:5555", "method": "POST",
              "path": "/predictions/echo", "status": 200, "latency_ms": 1.5}
    logging.getLogger("zerobatch.access").info("POST /predictions/echo 200",
                                              extra={"access": access})
    logging.getLogger("zerobatch.access").info("no extra")
    first, second = (json.loads(line) for line in lines(stream))
    assert first["access"] == access
    assert first["time"] != "t0"  # nested: the access fields never replace the line's own
    assert first["message"] == "POST /predictions/echo 200"
    assert "access" not in second


def test_json_values_that_json_cannot_write_become_text(restore_logging):
    stream = io.StringIO()
    logs.configure("INFO", "json", "frontend", stream=stream)
    logging.getLogger("zerobatch.access").info("x", extra={"access": {"at": object}})
    assert json.loads(lines(stream)[0])["access"] == {"at": str(object)}


def test_json_mode_logs_prints_warnings_and_uncaught_exceptions(restore_logging):
    stream = io.StringIO()
    logs.configure("INFO", "json", "worker", stream=stream)
    print("a handler's print")
    print("two", "parts", end="", flush=True)
    print("oops", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    try:
        raise ValueError("nobody caught me")
    except ValueError:
        sys.excepthook(*sys.exc_info())
    thread = threading.Thread(target=lambda: 1 / 0, name="doomed")
    thread.start()
    thread.join()
    records = [json.loads(line) for line in lines(stream)]
    brief = [(r["logger"], r["level"], r["message"].strip()) for r in records]
    assert brief[:3] == [("stdout", "INFO", "a handler's print"),
                         ("stdout", "INFO", "two parts"),
                         ("stderr", "WARNING", "oops")]
    assert brief[3][:2] == ("py.warnings", "WARNING")
    assert "DeprecationWarning: deprecated thing" in brief[3][2]
    assert brief[4] == ("zerobatch.uncaught", "ERROR", "uncaught ValueError")
    assert records[4]["exc_info"].endswith("ValueError: nobody caught me")
    assert brief[5] == ("zerobatch.uncaught", "ERROR",
                        "uncaught ZeroDivisionError in thread doomed")
    assert len(records) == 6


def test_configuring_twice_does_not_loop_through_the_replaced_stderr(restore_logging):
    stream = io.StringIO()
    logs.configure("INFO", "json", "worker", stream=stream)
    assert isinstance(sys.stderr, logs._LineLogger)
    handler = logs.configure("INFO", "json", "worker")  # default stream: the real stderr
    assert handler.stream is stream
    assert not isinstance(sys.stdout.fallback, logs._LineLogger)
    print("once")
    assert [json.loads(line)["message"] for line in lines(stream)] == ["once"]


def test_an_unknown_format_is_refused(restore_logging):
    with pytest.raises(ValueError, match="text, json"):
        logs.configure("INFO", "xml", "broker", stream=io.StringIO())


# ------------------------------------------------------------------ BufferedLines

def test_without_configure_there_are_no_buffered_lines(restore_logging):
    assert logs.buffered_lines("zerobatch.access") is None


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_buffered_lines_are_written_as_the_handler_writes_a_record(restore_logging,
                                                                   log_format):
    stream = io.StringIO()
    logs.configure("WARNING", log_format, "frontend", stream=stream)
    fields = {"status": 200, "path": "/predictions/echo"}
    logger = logging.getLogger("zerobatch.access")
    logger.setLevel(logging.INFO)
    try:
        logger.info("GET %s", "/x", extra={"access": fields})
    finally:
        logger.setLevel(logging.NOTSET)
    buffered = logs.buffered_lines("zerobatch.access")
    buffered.write("GET /x", {"access": fields})  # no event loop: written at once
    by_record, by_buffer = lines(stream)
    if log_format == "json":
        record, line = json.loads(by_record), json.loads(by_buffer)
        assert ISO_UTC_MS.match(line["time"])
        del record["time"], line["time"]
        assert line == record == {"level": "INFO", "process": "frontend", "pid": os.getpid(),
                                  "logger": "zerobatch.access", "message": "GET /x",
                                  "access": fields}
    else:
        record, line = TEXT_LINE.match(by_record), TEXT_LINE.match(by_buffer)
        assert line.groups() == record.groups() == (
            "INFO", "frontend", str(os.getpid()), "zerobatch.access", "GET /x")


def test_buffered_lines_wait_for_the_timer_or_a_full_buffer(restore_logging, monkeypatch):
    import asyncio

    stream = io.StringIO()
    logs.configure("INFO", "text", "frontend", stream=stream)
    monkeypatch.setattr(logs, "FLUSH_INTERVAL_S", 0.05)
    monkeypatch.setattr(logs, "FLUSH_LINES", 10)
    buffered = logs.buffered_lines("zerobatch.access")

    async def main():
        buffered.write("one")
        assert lines(stream) == []  # held until the timer
        while not lines(stream):
            await asyncio.sleep(0.01)  # poll: the timer fires within FLUSH_INTERVAL_S
        assert [line.rsplit(": ", 1)[1] for line in lines(stream)] == ["one"]
        for index in range(10):  # the tenth fills the buffer: all ten written at once
            buffered.write(str(index))
        assert len(lines(stream)) == 11
        buffered.write("last")
        buffered.flush()  # as the server's stop does
        assert lines(stream)[-1].endswith(": last")

    asyncio.run(asyncio.wait_for(main(), 10))
