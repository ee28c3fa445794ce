"""Helpers of the HTTP inference app: the JSON error body, falcon's error serializer and
handlers, the request body reader with its size limit, the deadline header, and the check of
a caller's request id.

Every error leaves the front end in TorchServe's shape, `{"code": <HTTP status>, "type":
<error name>, "message": <text>}`, whether it is a zerobatch ServingError (from the broker, a
worker, or the front end itself), a falcon HTTPError (unknown path, wrong method), or an
unexpected exception (logged, 500). Never an HTML page.

A prediction's error (`prediction_error_answer`) is TorchServe 0.12's answer, byte for byte:
its status, the simple name of the Java exception it answers with and its message, as Gson
pretty-prints them, then a newline. A failing handler is 503 "Prediction failed", whatever
it raised; out of memory 507 "Out of resources"; a body over the limit 413 with an empty
body. With zerobatch's answers (`--zerobatch-answers`, `zerobatch_answers=true`) a
prediction's error is zerobatch's own instead: the error's status, its type (HandlerError,
ResultCountMismatch, ...) and its message, which for a failing handler names the exception
and its text. A falcon error is answered in TorchServe's words either way.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import falcon
import falcon.asgi

from zerobatch.api.management_helpers import serialize_http_error, ts_json
from zerobatch.errors import (
    BadHandlerOutput,
    BadRequest,
    DeadlineUnreachable,
    HandlerError,
    ModelNotFound,
    ModelVersionNotFound,
    OutOfResources,
    PredictionError,
    QueueFull,
    RequestTooLarge,
    ResultCountMismatch,
    ServingError,
    UnserializableResult,
    WorkerLost,
)

log = logging.getLogger(__name__)

JSON = "application/json"
TIMEOUT_HEADER = "x-zerobatch-timeout-ms"
REQUEST_ID_HEADER = "x-request-id"
#: the longest request id a caller may choose (x-request-id); a longer one is replaced
MAX_REQUEST_ID_CHARS = 128
#: 1 to MAX_REQUEST_ID_CHARS visible ASCII characters: printable, without spaces, so that the
#: id is one token in a log line
_REQUEST_ID = re.compile(r"[!-~]{1,%d}" % MAX_REQUEST_ID_CHARS)
#: TorchServe's words for a path it does not serve
NOT_FOUND_MESSAGE = "Requested resource is not found, please refer to API document."
#: what TorchServe's Python backend answers for a handler's failure (ts/service.py), by the
#: worker's error class; TorchServe's front end sends it as an InternalServerException
_HANDLER_FAILURES: tuple[tuple[type[HandlerError], int, str], ...] = (
    (OutOfResources, 507, "Out of resources"),
    (BadHandlerOutput, 503, "Invalid model predict output"),
    (ResultCountMismatch, 503, "number of batch response mismatched"),
    (UnserializableResult, 503, "Unsupported model output data type."),
    (HandlerError, 503, "Prediction failed"),
)
#: TorchServe's exception for other errors, by status; a status TorchServe never answers a
#: prediction with (504 past a deadline, 408) keeps zerobatch's name
_TYPE_BY_STATUS = {400: "BadRequestException", 500: "InternalServerException",
                   503: "ServiceUnavailableException"}


def error_body(status: int, type_name: str, message: str) -> bytes:
    return json.dumps({"code": status, "type": type_name, "message": message}).encode()


#: falcon's own errors (404 unknown path, 405, bad headers) in TorchServe's words: a
#: ResourceNotFoundException, a MethodNotAllowedException, Gson-pretty JSON
http_error_serializer = serialize_http_error


def prediction_error_answer(error: ServingError, model_name: str, model_version: str | None,
                            detailed: bool = False) -> tuple[int, str | None, bytes]:
    """(status, content type or None, body) of a prediction that failed with `error`:
    TorchServe's answer, or zerobatch's own with `detailed` (see the module docstring)."""
    if detailed:
        status = error.http_status
        return status, JSON, ts_json({"code": status, "type": error.type_name,
                                      "message": error.message})
    status, type_name, message = _torchserve_error(error, model_name, model_version)
    if status == 413:  # Netty's HttpObjectAggregator: no body at all
        return status, None, b""
    return status, JSON, ts_json({"code": status, "type": type_name, "message": message})


def _torchserve_error(error: ServingError, model_name: str,
                      model_version: str | None) -> tuple[int, str, str]:
    """TorchServe 0.12's (status, exception name, message) for a prediction's error."""
    if isinstance(error, PredictionError):  # the handler's own status; Netty maps 413 to 507
        status = 507 if error.http_status == 413 else error.http_status
        return status, "InternalServerException", error.message
    if isinstance(error, HandlerError):
        for cls, status, message in _HANDLER_FAILURES:
            if isinstance(error, cls):
                return status, "InternalServerException", message
    if isinstance(error, ModelVersionNotFound):
        return 404, "ModelVersionNotFoundException", (
            f"Model version: {model_version} does not exist for model: {model_name}")
    if isinstance(error, ModelNotFound):
        return 404, "ModelNotFoundException", f"Model not found: {model_name}"
    if isinstance(error, QueueFull) and not isinstance(error, DeadlineUnreachable):
        # ApiUtils.getStreamingInferenceErrorResponseMessage, its quotes as they are
        version = "" if model_version is None else f'" Version {model_version}'
        return 503, "ServiceUnavailableException", (
            f'Model "{model_name}{version}" has no worker to serve inference request. Please '
            "use scale workers API to add workers. If this is a sequence inference, please "
            "check if it is closed, or expired; or exceeds maxSequenceJobQueueSize")
    if isinstance(error, WorkerLost):  # WorkerThread: the backend's connection was lost
        return 500, "InternalServerException", "Worker died."
    status = error.http_status
    return status, _TYPE_BY_STATUS.get(status, error.type_name), error.message


async def handle_serving_error(req: falcon.asgi.Request, resp: falcon.asgi.Response,
                               error: ServingError, params: dict[str, Any]) -> None:
    status = error.http_status
    if status >= 500:
        log.debug("%s %s -> %d %s: %s", req.method, req.path, status, error.code, error.message)
    resp.status = status
    resp.content_type = JSON
    resp.data = error_body(status, error.type_name, error.message)


async def handle_unexpected(req: falcon.asgi.Request, resp: falcon.asgi.Response,
                            error: Exception, params: dict[str, Any]) -> None:
    log.exception("unexpected error on %s %s", req.method, req.path, exc_info=error)
    resp.status = 500
    resp.content_type = JSON
    resp.data = error_body(500, "InternalServerError", f"internal server error: "
                                                       f"{type(error).__name__}")


def body_too_large(length: int, limit: int) -> RequestTooLarge:
    """The 413 for a body that declares `length` bytes (Content-Length) over `limit`."""
    return RequestTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")


async def read_body(req: falcon.asgi.Request, limit: int) -> bytes:
    """The whole request body, or RequestTooLarge (413) once it passes limit bytes."""
    length = req.content_length
    if length is not None:
        if length > limit:
            raise body_too_large(length, limit)
        return await req.stream.readall()
    chunks = []
    total = 0
    async for chunk in req.stream:  # chunked transfer: count as it comes
        total += len(chunk)
        if total > limit:
            raise RequestTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def timeout_from_header(value: str, default_ms: int) -> int:
    """The deadline a request asks for in x-zerobatch-timeout-ms, never past default_ms."""
    try:
        timeout_ms = int(value)
    except ValueError:
        timeout_ms = 0
    if timeout_ms <= 0:
        raise BadRequest(f"header {TIMEOUT_HEADER} must be a positive integer (milliseconds), "
                         f"got {value[:32]!r}")
    return min(timeout_ms, default_ms) if default_ms else timeout_ms


def valid_request_id(value: str) -> bool:
    """Whether a caller's x-request-id is kept as the request's id (else a fresh one is
    made): 1 to MAX_REQUEST_ID_CHARS visible ASCII characters (0x21 to 0x7E)."""
    return _REQUEST_ID.fullmatch(value) is not None
