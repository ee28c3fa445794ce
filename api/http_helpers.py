"""Helpers of the HTTP inference app: the JSON error body, falcon's error serializer and
handlers, the request body reader with its size limit, the deadline header, and the check of
a caller's request id.

Every error leaves the front end in TorchServe's shape, `{"code": <HTTP status>, "type":
<error name>, "message": <text>}`, whether it is a zerobatch ServingError (from the broker, a
worker, or the front end itself), a falcon HTTPError (unknown path, wrong method), or an
unexpected exception (logged, 500). Never an HTML page.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import falcon
import falcon.asgi

from zerobatch.errors import BadRequest, RequestTooLarge, ServingError

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


def error_body(status: int, type_name: str, message: str) -> bytes:
    return json.dumps({"code": status, "type": type_name, "message": message}).encode()


def http_error_serializer(req: falcon.Request, resp: falcon.Response,
                          error: falcon.HTTPError) -> None:
    """falcon's own errors (404 unknown path, 405, bad headers) in our JSON shape."""
    status = error.status_code
    type_name = type(error).__name__
    if type_name.startswith("HTTP"):
        type_name = type_name[4:]
    if isinstance(error, falcon.HTTPRouteNotFound):
        message = NOT_FOUND_MESSAGE
    elif error.description:
        message = error.description
    else:
        message = error.title or str(status)
    resp.content_type = JSON
    resp.data = error_body(status, type_name, message)


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
