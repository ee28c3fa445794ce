"""The one error tree of zerobatch, and the table that maps its wire codes to HTTP statuses.

Every error that crosses a process boundary travels as `(code, message, status)`: a stable
string code, a human message, and the HTTP status to answer with. Nothing is pickled.
Each subclass also inherits the builtin a Python caller would naturally catch, so
`except TimeoutError` works on a zerobatch deadline and `except ValueError` on bad input.
`client_safe` takes the server's paths out of a worker's or handler's text before a client
sees it.
"""

from __future__ import annotations

import re


class ServingError(Exception):
    """Base of every error zerobatch raises on purpose."""

    code = "internal_error"
    http_status = 500
    #: how long the sender expects the same request to be refused again (DeadlineUnreachable)
    retry_after_ms: int | None = None

    def __init__(self, message: str = "", *, status: int | None = None,
                 retry_after_ms: int | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        if status is not None:
            self.http_status = status
        if retry_after_ms is not None:
            self.retry_after_ms = retry_after_ms

    @property
    def message(self) -> str:
        return str(self.args[0])

    @property
    def type_name(self) -> str:
        return type(self).__name__

    def to_wire(self) -> tuple:
        """(code, message, status), and retry_after_ms when set."""
        if self.retry_after_ms is None:
            return (self.code, self.message, self.http_status)
        return (self.code, self.message, self.http_status, self.retry_after_ms)


class ConfigError(ServingError, ValueError):
    """The configuration is invalid; the message says how to fix it."""

    code = "config_error"
    http_status = 400


class ArchiveError(ConfigError):
    """A model archive is unsafe or malformed; the message names the archive and the member."""

    code = "archive_error"


class ProtocolError(ServingError, ValueError):
    """A frame or message does not follow the wire protocol."""

    code = "protocol_error"
    http_status = 400


class Forbidden(ServingError, PermissionError):
    """The caller may not do this: a control operation from a client that did not
    authenticate (only the local control socket and CURVE clients may)."""

    code = "forbidden"
    http_status = 403


class BadRequest(ServingError, ValueError):
    """The request itself is malformed (bad body, bad parameter)."""

    code = "bad_request"
    http_status = 400


class RequestTooLarge(BadRequest):
    """The request body is larger than the server accepts."""

    code = "request_too_large"
    http_status = 413


class RequestTimeout(BadRequest):
    """The client did not send its whole request (headers and body) in time."""

    code = "request_timeout"
    http_status = 408


class HeaderTooLarge(BadRequest):
    """The request line and headers (or a chunked body's trailer fields) are larger than the
    server accepts."""

    code = "header_too_large"
    http_status = 431


class ModelNotFound(ServingError, LookupError):
    """No model (or no such version) is registered under that name."""

    code = "model_not_found"
    http_status = 404


class ModelVersionNotFound(ModelNotFound):
    """The model is registered, but not that version of it."""

    code = "model_version_not_found"


class Conflict(ServingError, ValueError):
    """The model version is registered already (TorchServe's ConflictStatusException)."""

    code = "conflict"
    http_status = 409


class QueueFull(ServingError, OverflowError):
    """The model's queue is full; retry later."""

    code = "queue_full"
    http_status = 503


class DeadlineUnreachable(QueueFull):
    """The requests already queued would keep this one past its deadline: refused at once,
    rather than answered 504 after waiting in vain. A kind of QueueFull (the queue is full for
    this deadline), so callers that retry on a full queue retry on this too."""

    code = "deadline_unreachable"
    http_status = 503


class DeadlineExceeded(ServingError, TimeoutError):
    """The request's deadline passed before an answer was ready."""

    code = "deadline_exceeded"
    http_status = 504


class HandlerError(ServingError, RuntimeError):
    """The model's handler raised while running the request's batch."""

    code = "handler_error"
    http_status = 500


class PredictionError(HandlerError):
    """A handler raised a prediction error carrying its own HTTP status."""

    code = "prediction_error"


class OutOfResources(HandlerError):
    """The handler ran out of memory: a MemoryError, or an error that names CUDA (the way
    TorchServe tells a GPU's out-of-memory and CUBLAS failures)."""

    code = "out_of_resources"
    http_status = 507


class BadHandlerOutput(HandlerError):
    """The handler returned something other than a list of results."""

    code = "bad_handler_output"


class ResultCountMismatch(HandlerError):
    """The handler returned a list whose length is not the number of requests it was given."""

    code = "result_count_mismatch"


class UnserializableResult(HandlerError):
    """A handler's result cannot be sent (not bytes, text, a tensor or JSON-serializable)."""

    code = "unserializable_result"


class WorkerLost(ServingError, ConnectionError):
    """The worker running this request died or stopped answering."""

    code = "worker_lost"
    http_status = 503


class ModelLoadFailed(ServingError, ConnectionError):
    """The model's workers could not load it (bad handler, missing file); see the message."""

    code = "model_load_failed"
    http_status = 503


class BrokerUnavailable(ServingError, ConnectionError):
    """The broker did not answer; it may be down or restarting."""

    code = "broker_unavailable"
    http_status = 503


class ShuttingDown(ServingError, ConnectionError):
    """The server is stopping and accepts no new requests."""

    code = "shutting_down"
    http_status = 503


class TooManyConnections(ServingError, ConnectionError):
    """The HTTP front end holds as many open connections as it is allowed; retry later."""

    code = "too_many_connections"
    http_status = 503


_ALL: tuple[type[ServingError], ...] = (
    ServingError,
    ConfigError,
    ArchiveError,
    ProtocolError,
    Forbidden,
    BadRequest,
    RequestTooLarge,
    RequestTimeout,
    HeaderTooLarge,
    ModelNotFound,
    Conflict,
    QueueFull,
    DeadlineUnreachable,
    DeadlineExceeded,
    HandlerError,
    PredictionError,
    ModelVersionNotFound,
    OutOfResources,
    BadHandlerOutput,
    ResultCountMismatch,
    UnserializableResult,
    WorkerLost,
    ModelLoadFailed,
    BrokerUnavailable,
    ShuttingDown,
    TooManyConnections,
)

#: wire code -> error class. The single place codes are looked up.
ERROR_BY_CODE: dict[str, type[ServingError]] = {cls.code: cls for cls in _ALL}

#: wire code -> default HTTP status. The single table front ends answer from.
HTTP_STATUS_BY_CODE: dict[str, int] = {cls.code: cls.http_status for cls in _ALL}


def error_from_wire(code: str, message: str, status: int | None = None,
                    retry_after_ms: int | None = None) -> ServingError:
    """Rebuild the typed error a peer sent; unknown codes become a plain ServingError."""
    cls = ERROR_BY_CODE.get(code, ServingError)
    err = cls(message, status=status, retry_after_ms=retry_after_ms)
    if cls is ServingError and code != ServingError.code:
        err.code = code
    return err


#: An absolute filesystem path inside a message: in quotes (spaces allowed), or bare (up to
#: whitespace, a quote or a bracket). A bare one starts at a single `/` that follows no word
#: character, dot, dash or slash, so `a/b`, `1/2` and URLs (`http://host/x`) are left alone;
#: a `file://` URL counts as its path.
_QUOTED_PATH = re.compile(r"""(['"`])(/(?!/)[^'"`\n]*?)\1""")
_BARE_PATH = re.compile(r"""(?:\bfile://(?=/)|(?<![\w.~/\\-]))/(?!/)[^\s'"`<>()\[\]{},;]*""")


def client_safe(text: str) -> str:
    """`text` with every absolute filesystem path replaced by its last component, so that a
    message from a worker or a handler (a load error, an exception's text) can reach a client
    without telling it how the server's disk is laid out: `/srv/run/models/m/handler.py`
    becomes `handler.py`, `'/srv/w eights.pt'` becomes `'w eights.pt'`. The full text
    belongs in the server's own log."""
    if "/" not in text:
        return text
    text = _QUOTED_PATH.sub(lambda m: f"{m.group(1)}{_last_component(m.group(2))}{m.group(1)}",
                            text)
    return _BARE_PATH.sub(lambda m: _last_component(m.group(0)), text)


def _last_component(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or "/"
