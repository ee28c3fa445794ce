"""The access log: one line per HTTP request of the inference app, on the logger
"zerobatch.access", when FrontendConfig.access_log is on.

`AccessLog(app)` is pure ASGI middleware around the falcon app: it sees the status and the
response headers as they are sent, counts the body bytes (a stream's chunks too) and times
the request until the app has sent its last byte. When the access log is off, create_app
does not wrap the app: it costs nothing.

Each line is logged at INFO with its fields twice: in the message, in this fixed format,

    [TIME] CLIENT "METHOD PATH" STATUS BYTES LATENCYms model=MODEL version=VERSION request_id=ID

for example

    [2026-12-07T06:52:47.123Z] 127.0.0.1:51234 "POST /predictions/echo/1.0" 200 17 1.234ms
    model=echo version=1.0 request_id=9f1c0e3a5b7d2f4e0000000000000001

(one line), and as `extra={"access": {...}}`, a dict with the keys time, client, method,
path, model, version, status, bytes, latency_ms, request_id (the JSON log format writes them
as JSON), where

- time: when the request reached the app, ISO 8601 in UTC with milliseconds;
- client: the peer's "host:port" ("-" when the server does not know it);
- path: the path as the client sent it (still percent-encoded), without the query string;
- model, version: from a /predictions/MODEL[/VERSION[/URL_PATH]] or /explanations/... path,
  /models/MODEL/invoke or /MODEL[/VERSION]/predict, else "-";
- status: the response's status (500 when the app failed before answering, 499 when it was
  cancelled first: the client went away);
- bytes: the response body's length as sent (an int);
- latency_ms: from the request's arrival at the app to its last byte sent (a float, 3 decimals);
- request_id: the x-request-id the response carries (predictions only), else "-".

A field a client controls (path, model, version, request id) that holds spaces, quotes or
characters that are not printable ASCII is written escaped (\\xNN), and cut at
MAX_FIELD_CHARS, so one request is always one line and a client cannot forge lines.

The logger gets level INFO when nothing set one, so the lines come out whatever the server's
log level. In a front-end process, whose log zerobatch.logs set up, the lines skip logging's
records: `lines` (zerobatch.logs.BufferedLines) formats each as the log's handler would and
writes them a batch at a time, at most a quarter second late, flushed when the server stops
(about a third of a record's cost: benchmarks.bench_observability_cost). Answers
the HTTP layer gives by itself before the app sees a request (408, 431, 503 over the
connection cap: api/http_protocol.py) have no line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from zerobatch.logs import BufferedLines

#: the logger of the access lines
ACCESS_LOGGER = "zerobatch.access"
#: the message of each line (its arguments: the fields)
ACCESS_FORMAT = ('[%(time)s] %(client)s "%(method)s %(path)s" %(status)d %(bytes)d '
                 '%(latency_ms).3fms model=%(model)s version=%(version)s '
                 'request_id=%(request_id)s')
#: the longest client-controlled field written
MAX_FIELD_CHARS = 2048
#: the status logged when the app was cancelled before it answered (nginx's "client closed")
CLIENT_CLOSED = 499

#: the paths that name a model and a version (TorchServe's, then the url_path after them)
_MODEL_PATHS = ("/predictions/", "/explanations/")
#: first segments that are never a model of the legacy /MODEL/predict path
_RESERVED = frozenset({"models", "invocations", "ping", ""})
_REQUEST_ID = b"x-request-id"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def safe_field(text: str) -> str:
    """text as one log token: printable ASCII without spaces or quotes, at most
    MAX_FIELD_CHARS; anything else escaped."""
    if not (text.isascii() and text.isprintable() and " " not in text and '"' not in text):
        text = (text.encode("unicode_escape").decode("ascii")
                .replace(" ", "\\x20").replace('"', "\\x22"))
    return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + "..."


#: the last second utc_time formatted, and its text (a request a second pays strftime)
_last_second: list = [None, ""]


def utc_time(epoch_s: float) -> str:
    """epoch_s as ISO 8601 in UTC with milliseconds: 2026-12-07T06:52:47.123Z."""
    seconds = int(epoch_s)
    last = _last_second
    if last[0] != seconds:
        last[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        last[0] = seconds
    return f"{last[1]}.{int((epoch_s - seconds) * 1000):03d}Z"


def model_and_version(path: str) -> tuple[str, str]:
    """(model, version) of a /predictions or /explanations path (what follows the version is
    its url_path), of /models/MODEL/invoke and of the legacy /MODEL[/VERSION]/predict; "-"
    for what it does not name (/invocations names its model in the query)."""
    for prefix in _MODEL_PATHS:
        if path.startswith(prefix):
            parts = path[len(prefix):].split("/", 2)
            break
    else:
        parts = path.rstrip("/").split("/")
        if len(parts) == 4 and parts[1] == "models" and parts[3] == "invoke":
            parts = parts[2:3]
        elif 3 <= len(parts) <= 4 and parts[-1] == "predict" and parts[1] not in _RESERVED:
            parts = parts[1:-1]
        else:
            return "-", "-"
    model = safe_field(parts[0]) if parts[0] else "-"
    version = safe_field(parts[1]) if len(parts) >= 2 and parts[1] else "-"
    return model, version


class AccessLog:
    """ASGI middleware: one access line per HTTP request of `app` (see the module)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 logger: logging.Logger | None = None,
                 lines: BufferedLines | None = None) -> None:
        self.app = app
        self.log = logger or logging.getLogger(ACCESS_LOGGER)
        if self.log.level == logging.NOTSET:
            self.log.setLevel(logging.INFO)
        #: where the lines go without a LogRecord each (see the module docstring), or None
        self.lines = lines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan" and self.lines is not None:
            await self.app(scope, receive, self._flushing_at_shutdown(send))
            return
        if kind != "http" or (self.lines is None and not self.log.isEnabledFor(logging.INFO)):
            await self.app(scope, receive, send)
            return
        start_s = time.time()
        start_ns = time.monotonic_ns()
        client = scope.get("client")
        if client is not None and type(client) is not tuple:  # any 2-item iterable (ASGI)
            client = scope["client"] = tuple(client)
        sent = [0, 0, None]  # status, body bytes, request id

        async def counting_send(message: dict) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                sent[1] += len(message.get("body", b""))
            elif kind == "http.response.start":
                sent[0] = message["status"]
                for name, value in message.get("headers", ()):
                    if name == _REQUEST_ID:
                        sent[2] = value
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except asyncio.CancelledError:
            sent[0] = sent[0] or CLIENT_CLOSED
            raise
        except Exception:
            sent[0] = sent[0] or 500
            raise
        finally:
            self._line(scope, client, sent, start_s, time.monotonic_ns() - start_ns)

    def _flushing_at_shutdown(self, send: Send) -> Send:
        """send, flushing the buffered lines before the server is told shutdown is done."""
        lines = self.lines

        async def flushing_send(message: dict) -> None:
            if message["type"].startswith("lifespan.shutdown"):
                lines.flush()
            await send(message)

        return flushing_send

    def _line(self, scope: Scope, client: tuple | None, sent: list, start_s: float,
              elapsed_ns: int) -> None:
        raw_path = scope.get("raw_path")
        path = scope.get("path", "")
        model, version = model_and_version(path)
        request_id = sent[2]
        fields = {
            "time": utc_time(start_s),
            "client": f"{client[0]}:{client[1]}" if client else "-",
            "method": scope.get("method", "-"),
            "path": safe_field(raw_path.decode("latin-1") if raw_path else path),
            "model": model,
            "version": version,
            "status": sent[0],
            "bytes": sent[1],
            "latency_ms": round(elapsed_ns / 1e6, 3),
            "request_id": safe_field(request_id.decode("latin-1")) if request_id else "-",
        }
        if self.lines is not None:
            self.lines.write(ACCESS_FORMAT % fields, {"access": fields})
            return
        # Logger.info less its search of the caller's frame (findCaller), which a line that
        # always comes from here does not need
        log = self.log
        log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, ACCESS_FORMAT,
                                  (fields,), None, "AccessLog", {"access": fields}))
