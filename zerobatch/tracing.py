"""Tracing with OpenTelemetry: on when it is installed and configured, free when it is not.

Configured means the standard variables say where spans go: OTEL_TRACES_EXPORTER
("otlp", "console"; "none" turns tracing off), or an OTLP endpoint
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), and not OTEL_SDK_DISABLED.
The OTLP exporter (`opentelemetry-exporter-otlp-proto-http`, or `-grpc` with
OTEL_EXPORTER_OTLP_PROTOCOL=grpc) reads its own OTEL_EXPORTER_OTLP_* variables; spans are
batched (OTEL_BSP_*) and flushed when the process exits. OTEL_SERVICE_NAME names the
service ("zerobatch" by default) and each span carries the process it came from.

Without the packages, or without that configuration, `tracer()` is None and every caller
skips its tracing in one test: nothing is imported, nothing is paid.

The spans of one prediction, in one trace with the client's (W3C `traceparent`):
the front end's SERVER span (`POST /predictions/{model}`), and below it, from the worker that
ran the request's batch, `zerobatch.queue` (from the front end's send to the batch's start:
the broker's queue and the hop to the worker) and `zerobatch.handler` (the handler's call on
the batch, with its size). The front end passes its span on in the request's headers
(`traceparent`, and `x-zerobatch-sent-ns`, the wall clock of the send), which reach the
worker untouched through the broker, as every header does.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("zerobatch.tracing")

#: the header that carries the front end's send time (ns since the epoch) to the worker
SENT_HEADER = "x-zerobatch-sent-ns"
#: W3C trace context headers
TRACE_HEADERS = ("traceparent", "tracestate")

_tracer: Any = None
_configured = False


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def tracer(process: str, environ: Mapping[str, str] = os.environ) -> Any:
    """This process's tracer, set up on the first call; None when tracing is off."""
    global _tracer, _configured
    if _configured:
        return _tracer
    _configured = True
    if not configured(environ):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_* variables ask for traces, but the OpenTelemetry SDK is not "
                    "installed (pip install opentelemetry-sdk): no tracing")
        return None
    exporter = _exporter(environ)
    if exporter is None:
        return None
    resource = Resource.create({
        "service.name": environ.get("OTEL_SERVICE_NAME") or "zerobatch",
        "zerobatch.process": process})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    atexit.register(provider.shutdown)  # flush what is batched when the process exits
    _tracer = provider.get_tracer("zerobatch")
    log.info("tracing on: spans to %s", type(exporter).__name__)
    return _tracer


def _exporter(environ: Mapping[str, str]) -> Any:
    name = environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")[0].strip().lower() or "otlp"
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console): no tracing",
                    name)
        return None
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").lower()
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        package = "grpc" if protocol == "grpc" else "http"
        log.warning("the OTLP exporter is not installed (pip install "
                    "opentelemetry-exporter-otlp-proto-%s): no tracing", package)
        return None
    return OTLPSpanExporter()


def extract(headers: Mapping[str, str]) -> Any:
    """The trace context the W3C headers carry (lowercase names), for a span's parent."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    return TraceContextTextMapPropagator().extract(carrier=dict(headers))


def inject(context: Any = None) -> dict[str, str]:
    """W3C headers naming the current span (or the span of context) as the parent."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=context)
    return carrier


def reset_for_tests() -> None:
    """Forget the tracer so that a test can set up another (in-memory exporter)."""
    global _tracer, _configured
    _tracer = None
    _configured = False


def use_tracer_for_tests(test_tracer: Any) -> None:
    """Make test_tracer this process's tracer (an in-memory exporter's)."""
    global _tracer, _configured
    _tracer = test_tracer
    _configured = True
