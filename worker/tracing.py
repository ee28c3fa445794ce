"""The worker's spans for a batch, when tracing is on (zerobatch.tracing).

A batch holds requests from many traces, and a span has one parent, so each request that
carries a W3C `traceparent` (the front end's span, or a ZeroMQ caller's own) gets, in its
trace:

    zerobatch.queue    from the front end's send (`x-zerobatch-sent-ns`) to the batch's
                       arrival at the worker: the broker's queue, its batching wait and the
                       hops; left out when the request names no send time, or one that is
                       not before the arrival or is over MAX_QUEUE_S old
    zerobatch.batch    from the batch's arrival to its answers: decoding, the handler and
                       encoding; attributes: the model, its version, the batch id and size
      zerobatch.handler   the handler's call(s) on the batch (a failed batch retried in
                          halves is several calls: their count is an attribute)

A request without a `traceparent` gets no spans: a worker does not start traces of its own.
The worker's clock is the front end's: these are processes of one host (a remote worker's
queue span is as right as the two hosts' clocks agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import trace

from zerobatch import tracing

#: the oldest send time believed; older is a caller's header, not a queue
MAX_QUEUE_S = 3600


def record_batch(tracer: Any, request_headers: Sequence[dict[str, Any]], attributes: dict,
                 received_ns: int, handler_calls: Sequence[int], answered_ns: int) -> None:
    """The spans of one handler batch, for each of its traced requests (see the module);
    handler_calls: the wall-clock ns at which each handler call began and ended, in pairs."""
    traced = [headers for headers in request_headers if "traceparent" in headers]
    if not traced:
        return
    attributes = dict(attributes, **{"zerobatch.batch.size": len(request_headers)})
    for headers in traced:
        parent = tracing.extract({name: headers[name] for name in tracing.TRACE_HEADERS
                                  if isinstance(headers.get(name), str)})
        sent_ns = _sent_ns(headers.get(tracing.SENT_HEADER), received_ns)
        if sent_ns is not None:
            tracer.start_span("zerobatch.queue", context=parent, start_time=sent_ns,
                              attributes=attributes).end(end_time=received_ns)
        batch = tracer.start_span("zerobatch.batch", context=parent, start_time=received_ns,
                                  attributes=attributes)
        if handler_calls:
            handler = tracer.start_span(
                "zerobatch.handler", context=trace.set_span_in_context(batch),
                start_time=handler_calls[0],
                attributes={"zerobatch.handler.calls": len(handler_calls) // 2})
            handler.end(end_time=handler_calls[-1])
        batch.end(end_time=answered_ns)


def _sent_ns(value: Any, received_ns: int) -> int | None:
    """The send time a request's header names, when it is believable (see the module)."""
    if not isinstance(value, str) or not value.isdigit():
        return None
    sent_ns = int(value)
    if not received_ns - MAX_QUEUE_S * 10**9 <= sent_ns <= received_ns:
        return None
    return sent_ns
