"""How every zerobatch process writes its log: plain text, or one JSON object a line.

Each entry point (the keeper, the broker, a front end, the management and metrics APIs, a
worker) calls `configure(level, log_format, process)` once, as soon as it has its config;
the records go to stderr, which `zerobatch start` points at RUN_DIR/zerobatch.log.

text (the default), one line a record:

    2026-12-07 06:52:47,123 INFO broker[4242] zerobatch.broker: model echo/1.0 registered ...

json, one JSON object a line (json.dumps escapes newlines, so a traceback stays on its line):

    {"time": "2026-12-07T06:52:47.123Z", "level": "INFO", "process": "broker", "pid": 4242,
     "logger": "zerobatch.broker", "message": "model echo/1.0 registered ..."}

  time        when the record was made, ISO-8601 in UTC with milliseconds
  level       DEBUG, INFO, WARNING, ERROR or CRITICAL
  process     which zerobatch process: keeper, broker, frontend, management, metrics, worker
  pid         its process id
  logger      the logger's name (zerobatch.broker, uvicorn.error, py.warnings, stdout, ...)
  message     the message, its arguments filled in
  exc_info    only with an exception: its traceback, as text
  stack_info  only when the call asked for one (stack_info=True)
  access      only on the access log's lines (logger "zerobatch.access"): the dict the front
              end passed as `extra={"access": {...}}`, nested under this key as it is (not
              merged into the top level, where its names could collide with time or level)

JSON mode also routes what would otherwise bypass logging into it, so that every line of the
log parses: Python warnings (logger py.warnings), uncaught exceptions of the main thread and
of other threads (one ERROR record with exc_info), and text written to sys.stdout or
sys.stderr, e.g. a handler's print() (loggers "stdout" at INFO and "stderr" at WARNING, one
record per line). Bytes written straight to file descriptors 1 and 2 by C code (or by a child
process that inherits them) still reach the log as they are. Text mode changes none of this.

The cost per record is what logging.Formatter does anyway plus one json.dumps of a small dict.

A logger with a line a request (the access log) would pay that per request: `BufferedLines`
writes its INFO lines straight to configure()'s stream instead, in the same format (text or
JSON, the same fields), without a LogRecord, a batch of lines at a time (at most
FLUSH_LINES lines, or FLUSH_INTERVAL_S late on an event loop). `buffered_lines(name)` gives
one when configure() set this process's log up, else None (the caller logs as usual).
"""

from __future__ import annotations

import asyncio
import atexit
import io
import json
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

from zerobatch.config import LOG_FORMATS

#: The text format; {process} is the process's name (broker, frontend, worker, ...).
TEXT_FORMAT = "%(asctime)s %(levelname)s {process}[%(process)d] %(name)s: %(message)s"
#: Fields of a record's `extra` that a JSON line carries, each under its own name.
EXTRA_KEYS = ("access",)
#: BufferedLines writes when it holds this many lines ...
FLUSH_LINES = 256
#: ... or this long after the first of them, on an event loop (at once without one)
FLUSH_INTERVAL_S = 0.25

#: what configure() set up in this process: (handler, log format, process name), or None
_configured: tuple[logging.Handler, str, str] | None = None


class JsonFormatter(logging.Formatter):
    """One JSON object a record (see the module docstring for its fields)."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname,
            "process": self.process,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            if not record.exc_text:  # cached on the record, as logging.Formatter does
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        for key in EXTRA_KEYS:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        return json.dumps(line, default=str)

    def _time(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # one strftime a second, not one a record
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int(record.msecs):03d}Z"


class _LineLogger(io.TextIOBase):
    """A text stream that logs each line written to it as one record (sys.stdout and
    sys.stderr in JSON mode). A write made while one of its records is being emitted (a
    handler's own error report) goes to `fallback` as it is, so it cannot loop."""

    def __init__(self, logger: logging.Logger, level: int, fallback: TextIO) -> None:
        super().__init__()
        self._logger = logger
        self._level = level
        self.fallback = fallback
        self._partial = ""
        self._lock = threading.Lock()  # threads that print at once keep their lines whole
        self._local = threading.local()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.fallback, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.fallback.fileno()

    def write(self, text: str) -> int:
        if getattr(self._local, "emitting", False):
            return self.fallback.write(text)
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        if getattr(self._local, "emitting", False):
            return
        with self._lock:
            line, self._partial = self._partial, ""
        if line:
            self._emit(line)

    def _emit(self, line: str) -> None:
        self._local.emitting = True
        try:
            self._logger.log(self._level, "%s", line.rstrip("\r"))
        finally:
            self._local.emitting = False


def configure(level: str | int, log_format: str, process: str,
              stream: TextIO | None = None) -> logging.Handler:
    """Send this process's log records to `stream` (default: sys.stderr) as `log_format`
    ("text" or "json"), at `level` ("INFO", "debug", logging.WARNING, ...), naming the
    process `process`. Replaces any handler of the root logger; the handler it installs."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format {log_format!r} must be one of {', '.join(LOG_FORMATS)}")
    if isinstance(level, str):
        level = level.upper()
    if stream is None:  # the real stderr, also when an earlier call replaced sys.stderr
        stream = _unwrapped(sys.stderr)
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT.format(process=process)))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if log_format == "json":
        _route_into_logging(stream)
    global _configured
    _configured = (handler, log_format, process)
    return handler


def buffered_lines(logger_name: str) -> BufferedLines | None:
    """A BufferedLines for logger_name's INFO lines on the stream configure() set up; None
    when configure() has not run in this process (the log is not zerobatch's to write)."""
    if _configured is None:
        return None
    handler, log_format, process = _configured
    return BufferedLines(logger_name, handler, log_format, process)


class BufferedLines:
    """INFO lines of one logger, formatted as configure()'s handler formats a record and
    written to its stream a batch at a time (see the module docstring). Not thread-safe: one
    event loop's lines."""

    def __init__(self, logger_name: str, handler: logging.Handler, log_format: str,
                 process: str) -> None:
        self.logger_name = logger_name
        self._handler = handler
        self._json = log_format == "json"
        self._text_head = f" INFO {process}[{os.getpid()}] {logger_name}: "
        self._json_head = {"level": "INFO", "process": process, "pid": os.getpid(),
                           "logger": logger_name}
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""
        atexit.register(self.flush)

    def write(self, message: str, extra: dict[str, Any] | None = None) -> None:
        """One line: `message`, with `extra` (EXTRA_KEYS) in a JSON line as a record's."""
        now = time.time()
        if self._json:
            line = dict(time=self._stamp(now, True), **self._json_head, message=message)
            if extra:
                line.update((key, extra[key]) for key in EXTRA_KEYS if key in extra)
            self._lines.append(json.dumps(line, default=str))
        else:
            self._lines.append(self._stamp(now, False) + self._text_head + message)
        if len(self._lines) >= FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_INTERVAL_S, self._tick)

    def flush(self) -> None:
        """Write the lines held, under the handler's lock (no record lands inside them)."""
        lines, self._lines = self._lines, []
        if not lines:
            return
        handler = self._handler
        handler.acquire()
        try:
            stream = handler.stream
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except Exception:  # a log line never fails a request; logging says why, as usual
            handler.handleError(logging.makeLogRecord({"msg": lines[0]}))
        finally:
            handler.release()

    def _tick(self) -> None:
        self._timer = None
        self.flush()

    def _stamp(self, now: float, utc: bool) -> str:
        """now as the handler's formatter writes a record's time: UTC ISO-8601 with
        milliseconds in JSON, logging's default asctime (local time, ",mmm") in text."""
        second = int(now)
        if second != self._second:  # one strftime a second, not one a line
            self._second_text = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) if utc
                                 else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
            self._second = second
        millis = int((now - second) * 1000)
        return f"{self._second_text}.{millis:03d}Z" if utc else f"{self._second_text},{millis:03d}"


def _route_into_logging(stream: TextIO) -> None:
    """JSON mode: warnings, uncaught exceptions and sys.stdout/sys.stderr text become records."""
    logging.captureWarnings(True)
    uncaught = logging.getLogger("zerobatch.uncaught")

    def excepthook(exc_type, exc, traceback) -> None:
        uncaught.error("uncaught %s", exc_type.__name__, exc_info=(exc_type, exc, traceback))

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        uncaught.error("uncaught %s in thread %s", args.exc_type.__name__, name,
                       exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
    sys.stdout = _LineLogger(logging.getLogger("stdout"), logging.INFO, _unwrapped(sys.stdout))
    sys.stderr = _LineLogger(logging.getLogger("stderr"), logging.WARNING, stream)


def _unwrapped(output: TextIO) -> TextIO:
    """The stream itself, or the one it replaced if an earlier configure() wrapped it."""
    return output.fallback if isinstance(output, _LineLogger) else output
