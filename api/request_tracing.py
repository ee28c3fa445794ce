"""The front end's span for a prediction, when tracing is on (zerobatch.tracing).

`traced(tracer, predict, req, resp, model, version)` runs `predict` inside a SERVER span named
after the route that matched (`POST /predictions/{model_name}`, `.../{model_version}`,
`/explanations/...`, `.../{url_path:path}`), whose parent is
the caller's W3C `traceparent` when it sent one. The headers forwarded to the broker are a copy
of the request's with this span's `traceparent` (and `tracestate`) in place of the caller's,
and `x-zerobatch-sent-ns` set by `predict` right before the send: the worker that runs the
request hangs its queue, batch and handler spans under it (worker.tracing).

The span ends with the response: at its last chunk for a stream; its status is an error for
a 5xx answer or a failure, its attributes the route, the model, the version, the request id
and the response status (OpenTelemetry's HTTP names).

Imported only when tracing is on: api.http_app pays one `is None` test per request otherwise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import falcon.asgi
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from zerobatch import tracing
from zerobatch.api.http_helpers import REQUEST_ID_HEADER
from zerobatch.errors import ServingError

Predict = Callable[[falcon.asgi.Request, falcon.asgi.Response, str, "str | None",
                    "dict[str, str]"], Awaitable[None]]


async def traced(tracer: Any, predict: Predict, req: falcon.asgi.Request,
                 resp: falcon.asgi.Response, model: str, version: str | None) -> None:
    """predict(req, resp, model, version, forwarded headers) inside the request's span."""
    headers = dict(req.headers)
    # the route that matched (/explanations/..., a url_path after the version: each its own)
    route = req.uri_template or ("/predictions/{model_name}"
                                 + ("/{model_version}" if version else ""))
    span = tracer.start_span(
        f"{req.method} {route}", context=tracing.extract(headers), kind=SpanKind.SERVER,
        attributes={"http.request.method": req.method, "http.route": route,
                    "url.path": req.path, "zerobatch.model": model,
                    "zerobatch.model_version": version or ""})
    for name in tracing.TRACE_HEADERS:
        headers.pop(name, None)
    headers.update(tracing.inject(trace.set_span_in_context(span)))
    try:
        await predict(req, resp, model, version, headers)
    except ServingError as exc:
        _end(span, exc.http_status, resp, str(exc))
        raise
    except BaseException as exc:
        span.record_exception(exc)
        _end(span, 500, resp, type(exc).__name__)
        raise
    if resp.stream is not None:
        resp.stream = _ending(resp.stream, span, resp)
    else:
        _end(span, resp.status_code, resp)


async def _ending(chunks: AsyncIterator[bytes], span: Any,
                  resp: falcon.asgi.Response) -> AsyncIterator[bytes]:
    """chunks, with the span ended after the last one (or when the stream is cut)."""
    try:
        async for chunk in chunks:
            yield chunk
    except BaseException as exc:
        span.record_exception(exc)
        _end(span, resp.status_code, resp, "the stream was cut: " + type(exc).__name__)
        raise
    _end(span, resp.status_code, resp)


def _end(span: Any, status: int, resp: falcon.asgi.Response, error: str | None = None) -> None:
    span.set_attribute("http.response.status_code", status)
    request_id = resp.get_header(REQUEST_ID_HEADER)
    if request_id:
        span.set_attribute("zerobatch.request_id", request_id)
    if status >= 500 or (error is not None and status < 400):
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
