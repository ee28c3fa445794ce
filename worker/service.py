"""The model service: a loaded handler and its Context, turning one BATCH (or BATCHES) message
into one W_REPLY.

No sockets here. `Service.load` reads the model directory, resolves and initializes the
handler; `Service.run_batch` decodes the batch's requests, calls the handler with the whole
list (once per batch of a BATCHES message), and builds the W_REPLY frames, one (answer, body)
pair per request, in order. Per request:

- a request's row is {"body": the decoded body} (worker.codec), or one key per field for a
  form body (worker.forms), as TorchServe's front end passes them;
- a request whose meta frame is malformed, or whose form body does not parse, gets ERROR
  `bad_request` and is left out of the list the handler sees (the others still run);
- when the handler raises, or returns something other than a list with one result per
  request, on a batch of n > 1 requests, the batch is retried in two halves, recursively,
  down to single requests (at most 2n - 1 calls), so only the requests that fail on their
  own get an error; model-config.yaml `retryFailedBatch: false` turns this off and fails the
  whole batch, as TorchServe does. A halve that already streamed chunks is not retried;
- a failing request gets ERROR `handler_error`, status 500, message "ExceptionType: text"
  (a `ts.utils.util.PredictionException`, ours or any exception with int `error_code` and
  `message`, keeps its own status, when it is 4xx or 5xx, and message as
  `prediction_error`; a MemoryError, or an error whose text names CUDA (TorchServe's test
  for a GPU out of memory), or a torch OutOfMemoryError, is `out_of_resources`, 507; a
  result that is not a list is `bad_handler_output`, one of the wrong length
  `result_count_mismatch`, one that cannot be serialized `unserializable_result`); the front
  end answers each in TorchServe's words, or with this code and message when asked for
  detailed errors (api.http_helpers); absolute paths in the message are cut to their last
  component (errors.client_safe), the log has them whole;
- otherwise each result becomes REPLY with the status and headers the handler set through
  the Context (status 200 and none by default), and the body's content type: the one the
  handler set, else the codec's. The headers keep the handler's content-type, so that the HTTP
  answer carries a Content-Type only when the handler set one, as TorchServe's does.

Streaming: `send_partial(batch_id, position, value, processor)` sends one intermediate chunk
through the `partial_sink` the worker loop installs (the data socket's send, as W_PARTIAL);
`ts.handler_utils.utils.send_intermediate_predict_response` calls it while the handler runs.

Metrics: what the handler records through `context.metrics` (TorchServe's custom metrics API,
worker.compat.metrics_cache) is exported after each handler call, its retries included, by the
service's MetricsExporter (worker.metrics_export), which also observes each handler call's
time and sets PredictionTime after a call that succeeded (as TorchServe's service does); what
`initialize` recorded is exported once the model has loaded. Without an exporter
(`Service.load(..., export_metrics=False)`, the default) the records are kept until the next
call and go nowhere. A metrics file (TorchServe's metrics.yaml, `metrics_config`) puts its
`model_metrics` in the cache before the handler initializes.

Tracing: when zerobatch.tracing is on, each handler batch's queue, batch and handler spans are
recorded in the traces of its requests (worker.tracing); off, a batch pays one `is None` test.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from typing import Any, Callable, Sequence

from zerobatch import protocol, tracing
from zerobatch.config import ModelConfig
from zerobatch.errors import (
    BadHandlerOutput,
    BadRequest,
    ConfigError,
    HandlerError,
    OutOfResources,
    PredictionError,
    ProtocolError,
    ResultCountMismatch,
    UnserializableResult,
    client_safe,
)
from zerobatch.model_files import load_model_config, manifest_file, read_manifest
from zerobatch.worker.codec import decode_body, encode_value
from zerobatch.worker.compat.metrics import set_default_sink
from zerobatch.worker.context import Context, MetricsCache, RequestProcessor
from zerobatch.worker.forms import FormError, decode_form
from zerobatch.worker.handler_loader import EntryPoint, load_entry_point, torch_missing_error
from zerobatch.worker.metrics_export import MetricsExporter
from zerobatch.worker.model_dir import add_to_sys_path

log = logging.getLogger(__name__)

#: Longest error message sent on the wire; the rest is in the worker's log.
MAX_ERROR_MESSAGE_CHARS = 4000

#: The model-config.yaml key that turns per-request failure isolation off (default on).
RETRY_FAILED_BATCH_KEY = "retryFailedBatch"


class Service:
    """One loaded model version: its handler entry point and the Context it runs with."""

    def __init__(self, entry_point: EntryPoint, context: Context,
                 exporter: MetricsExporter | None = None, model_version: str = "") -> None:
        self.entry_point = entry_point
        self.context = context
        #: each batch's spans, when tracing is on (worker.tracing, only imported then)
        self._record_spans: Callable[..., None] | None = None
        tracer = tracing.tracer("worker")
        if tracer is not None:
            from zerobatch.worker.tracing import record_batch
            self._record_spans = functools.partial(record_batch, tracer)
        self._span_attributes = {"zerobatch.model": context.model_name,
                                 "zerobatch.model_version": model_version}
        #: while a traced batch runs: the wall-clock ns each handler call began and ended
        self._handler_calls: list[int] | None = None
        #: where the handler's metrics go after each call (None: nowhere)
        self.exporter = exporter
        self._observe_handler_s = exporter.observe_handler_s if exporter is not None else None
        self._set_prediction_ms = exporter.set_prediction_ms if exporter is not None else None
        retry = context.model_yaml_config.get(RETRY_FAILED_BATCH_KEY, True)
        if not isinstance(retry, bool):
            raise ConfigError(f"model-config.yaml of {context.model_name}: "
                              f"{RETRY_FAILED_BATCH_KEY} must be true or false, not {retry!r}")
        self.retry_failed_batch = retry
        #: Where W_PARTIAL frames go (set by the worker loop); None: streaming is refused.
        self.partial_sink: Callable[[list], None] | None = None
        #: The batch being run, and each handler index's position in it (for send_partial).
        self._batch_id = 0
        self._positions: list[int] = []
        self._partials_sent = 0
        context.send_partial = self.send_partial

    @classmethod
    def load(cls, model: ModelConfig, gpu_id: int | None = None, *,
             export_metrics: bool = False, metrics_config: str = "") -> "Service":
        """Read the model directory, resolve the handler and initialize it; with
        export_metrics, the handler's metrics go to prometheus_client (see the docstring)."""
        model_dir = os.path.abspath(model.path)
        manifest = read_manifest(model_dir)
        handler = manifest["model"]["handler"]
        add_to_sys_path(model_dir)
        try:
            metrics = MetricsCache(model.name, metrics_config or None)
        except Exception as exc:  # the MetricsCache* errors: IO, YAML, a bad model_metrics
            raise ConfigError(f"metrics file {os.path.basename(metrics_config)}: "
                              f"{type(exc).__name__}: {exc}") from exc
        # TorchServe's load has a request id of its own: initialize's metrics get the
        # ModelName and Level "Model" dimensions
        metrics.set_request_ids(str(uuid.uuid4()))
        set_default_sink(metrics.records)
        context = Context(model.name, model_dir, manifest, model.batch_size, gpu_id,
                          metrics=metrics,
                          model_yaml_config=load_model_config(model_dir, manifest))
        exporter = MetricsExporter(model.name, model.version) if export_metrics else None
        try:
            entry_point, initialize = load_entry_point(model_dir, handler)
            initialize(context)
        except Exception as exc:
            missing = torch_missing_error(model.name, exc)
            if missing is not None:
                raise missing from None
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"handler {handler!r} of {manifest_file(model_dir)} failed to "
                              f"initialize: {type(exc).__name__}: {exc}") from exc
        log.info("model %s/%s loaded from %s (handler %s)", model.name, model.version,
                 model_dir, handler)
        service = cls(entry_point, context, exporter, model.version)
        service.export_metrics()  # what initialize recorded
        return service

    def export_metrics(self) -> None:
        """Hand the records of the last handler call (or of initialize) to the exporter."""
        exporter = self.exporter
        records = self.context.metrics.records
        if exporter is not None and records:
            exporter.export(records)

    def run_batch(self, batch_id: int, items: Sequence[tuple[Any, Any]],
                  sizes: Sequence[int] | None = None) -> list:
        """Run one BATCH's (meta, body) items, or a BATCHES message's batches of `sizes`
        items, one handler call each, in order; return the one W_REPLY for all of them."""
        self._batch_id = batch_id
        answers: list[tuple] = []
        if sizes is None or len(sizes) == 1:
            self._answer(batch_id, items, 0, answers)
        else:
            start = 0
            for size in sizes:
                self._answer(batch_id, items[start:start + size], start, answers)
                start += size
        return protocol.encode_worker_reply(batch_id, answers)

    def _answer(self, batch_id: int, items: Sequence[tuple[Any, Any]], start: int,
                answers: list[tuple]) -> None:
        """One handler call for items (at `start` in their message); appends their
        (answer, body) pairs to answers."""
        data: list[dict[str, Any]] = []
        request_headers: list[dict[str, Any]] = []
        request_ids: list[str] = []
        positions: list[int] = []
        rejected: dict[int, tuple] = {}
        for position, (meta, body) in enumerate(items, start):
            try:
                content_type, headers, request_id = protocol.parse_meta(meta)
            except ProtocolError as exc:
                rejected[position] = _error(BadRequest.code, f"bad request meta: {exc}",
                                            BadRequest.http_status)
                continue
            form = None
            if "form" in content_type.lower():  # a cheap test first: forms are rare
                try:
                    form = decode_form(content_type, body)
                except FormError as exc:
                    rejected[position] = _error(BadRequest.code, str(exc),
                                                BadRequest.http_status)
                    continue
            if form is None:
                request_header: dict[str, Any] = {"body": {"content-type": content_type}}
                row = {"body": decode_body(content_type, body)}
            else:  # one key per form field, as TorchServe's front end splits them
                row, field_types = form
                request_header = {name: {"content-type": field_type}
                                  for name, field_type in field_types.items()}
            if headers:
                request_header.update(headers)
            request_ids.append(request_id or f"{batch_id}-{position}")
            request_headers.append(request_header)
            positions.append(position)
            data.append(row)

        self.context.metrics.reset(None)
        record_spans = self._record_spans
        if record_spans is None or not data:
            answered = self._run(data, request_headers, request_ids, positions) if data else []
        else:
            received_ns = time.time_ns()
            self._handler_calls = handler_calls = []
            try:
                answered = self._run(data, request_headers, request_ids, positions)
            finally:
                self._handler_calls = None
            record_spans(request_headers, dict(self._span_attributes, **{
                "zerobatch.batch.id": batch_id}), received_ns, handler_calls, time.time_ns())
        self.export_metrics()
        if rejected:
            answered_iter = iter(answered)
            answers.extend(rejected.get(position) or next(answered_iter)
                           for position in range(start, start + len(items)))
        else:
            answers.extend(answered)

    def _run(self, data: list, request_headers: list[dict], request_ids: list[str],
             positions: list[int]) -> list[tuple]:
        """Answer these requests; on a failure, retry them in halves (see the docstring)."""
        count = len(data)
        partials_before = self._partials_sent
        answers, exc = self._call(data, request_headers, request_ids, positions)
        if exc is None:
            return answers
        if count == 1 or not self.retry_failed_batch or self._partials_sent != partials_before:
            log.error("handler of %s failed on %d request(s) of batch %d (request ids %s)",
                      self.context.model_name, count, self._batch_id, ", ".join(request_ids),
                      exc_info=exc if isinstance(exc, BaseException) else None)
            return answers
        half = count // 2
        log.info("batch %d of %s: the handler failed on %d requests (%s); retrying them as "
                 "%d + %d", self._batch_id, self.context.model_name, count,
                 _describe(exc), half, count - half)
        return (self._run(data[:half], request_headers[:half], request_ids[:half],
                          positions[:half])
                + self._run(data[half:], request_headers[half:], request_ids[half:],
                            positions[half:]))

    def _call(self, data: list, request_headers: list[dict], request_ids: list[str],
              positions: list[int]) -> tuple[list[tuple], Any]:
        """One handler call: ((answer, body) per request, None) or (error pairs, the exception
        or message)."""
        context = self.context
        processors = [RequestProcessor(header) for header in request_headers]
        ids = dict(enumerate(request_ids))
        context.request_ids = ids
        context.request_processor = processors
        context.metrics.request_ids = ids
        self._positions = positions
        count = len(data)
        handler_calls = self._handler_calls
        if handler_calls is not None:
            handler_calls.append(time.time_ns())
        start_ns = time.monotonic_ns()
        try:
            results = self.entry_point(data, context)
        except Exception as exc:
            self._handler_ran(start_ns, handler_calls)
            return [_handler_failure(exc)] * count, exc
        elapsed_ns = self._handler_ran(start_ns, handler_calls)
        if not isinstance(results, list):
            message = (f"handler returned {type(results).__name__}, expected a list with one "
                       f"result for each of {count} requests")
            return [_error(BadHandlerOutput.code, message, BadHandlerOutput.http_status)
                    ] * count, message
        if len(results) != count:
            message = f"handler returned {len(results)} results for {count} requests"
            return [_error(ResultCountMismatch.code, message, ResultCountMismatch.http_status)
                    ] * count, message
        if self._set_prediction_ms is not None:
            self._set_prediction_ms(round(elapsed_ns / 1e6, 2))
        return [_reply(index, value, processors[index])
                for index, value in enumerate(results)], None

    def _handler_ran(self, start_ns: int, handler_calls: list[int] | None) -> int:
        """The handler call that started at start_ns is over: its time, observed (and its
        end noted for the batch's spans when they are recorded)."""
        elapsed_ns = time.monotonic_ns() - start_ns
        if handler_calls is not None:
            handler_calls.append(time.time_ns())
        observe = self._observe_handler_s
        if observe is not None:
            observe(elapsed_ns / 1e9)
        return elapsed_ns

    def send_partial(self, index: int, value: Any, status: int | None = None) -> None:
        """Stream `value` now as an intermediate chunk for request `index` of the running call.

        The chunk is encoded like a result, with the request's current response headers and
        content type; `status` overrides the request's current status.
        """
        sink = self.partial_sink
        if sink is None:
            raise RuntimeError("this worker cannot stream: no partial sink is installed")
        positions = self._positions
        if not 0 <= index < len(positions):
            raise IndexError(f"request index {index} is not in this batch of {len(positions)}")
        processor = self.context.request_processor[index]
        body, meta = _encode(index, value, processor, status)
        sink(protocol.encode_worker_partial(self._batch_id, positions[index], meta, body))
        self._partials_sent += 1


def _reply(index: int, value: Any, processor: RequestProcessor) -> tuple:
    try:
        body, meta = _encode(index, value, processor)
    except (TypeError, ValueError) as exc:
        log.warning("result %d of type %s cannot be answered: %s", index,
                    type(value).__name__, exc)
        return _error(UnserializableResult.code, str(exc), UnserializableResult.http_status)
    return protocol.encode_reply_answer(meta, body)


def _encode(index: int, value: Any, processor: RequestProcessor,
            status: int | None = None) -> tuple[Any, bytes]:
    """(body, reply_meta) for one result or chunk; TypeError/ValueError with the reason."""
    try:
        body, content_type = encode_value(value)
    except (TypeError, ValueError) as exc:
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        raise kind(f"result {index} cannot be serialized: {type(exc).__name__}: {exc}") from exc
    headers = processor.get_response_headers()
    if headers:  # as the handler set them, its content-type too (the HTTP answer's own)
        headers = {str(k): str(v) for k, v in headers.items()}
        content_type = headers.get("content-type") or content_type
    else:
        headers = None
    meta = protocol.encode_reply_meta(status or processor.get_response_status_code(),
                                      content_type, headers)
    if len(meta) > protocol.MAX_HEADER_BYTES:
        raise ValueError(f"response headers of result {index} take {len(meta)} bytes, "
                         f"more than {protocol.MAX_HEADER_BYTES}")
    return body, meta


def _describe(exc: Any) -> str:
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)


def _handler_failure(exc: Exception) -> tuple:
    error_code = getattr(exc, "error_code", None)
    if isinstance(error_code, int) and hasattr(exc, "message"):  # ts PredictionException
        status = error_code if 400 <= error_code <= 599 else HandlerError.http_status
        return _error(PredictionError.code, str(exc.message), status)
    message = f"{type(exc).__name__}: {exc}"
    if (isinstance(exc, MemoryError) or "CUDA" in str(exc)
            or type(exc).__name__ == "OutOfMemoryError"):  # torch's, on any device
        return _error(OutOfResources.code, message, OutOfResources.http_status)
    return _error(HandlerError.code, message, HandlerError.http_status)


def _error(code: str, message: str, status: int) -> tuple:
    """The ERROR answer for one request: every error text a request gets from this worker
    passes here, without the server's paths (client_safe); the log keeps the full text."""
    message = client_safe(message)
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[:MAX_ERROR_MESSAGE_CHARS] + "... (truncated; see the worker log)"
    return protocol.encode_error_answer(code, message, status)
