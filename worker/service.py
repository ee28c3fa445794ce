"""The model service: a loaded handler and its Context, turning one BATCH into one W_REPLY.

No sockets here. `Service.load` reads the model directory, resolves and initializes the
handler; `Service.run_batch` decodes the batch's requests, calls the handler once with the
whole list, and builds the W_REPLY frames, one (cmd, a, b) triple per request, in order:

- a request whose meta frame is malformed gets ERROR `bad_request` and is left out of the
  list the handler sees (the others still run);
- a handler exception answers every request of the batch with ERROR `handler_error`, status
  500, message "ExceptionType: text" (a `ts.utils.util.PredictionException`, ours or any
  exception with int `error_code` and `message`, keeps its own status, when it is 4xx or 5xx,
  and message as `prediction_error`; out-of-memory answers 507, as TorchServe does);
- a result that is not a list with one item per request answers every request with an error;
- otherwise each result becomes REPLY with the status, content type and headers the handler
  set through the Context (status 200 and the codec's content type by default).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Sequence

from worker.codec import decode_body, encode_value
from worker.context import Context, MetricsCache, RequestProcessor
from worker.handler_loader import EntryPoint, load_entry_point
from worker.model_dir import add_to_sys_path, manifest_file, read_manifest, read_model_yaml_config
from zerobatch import protocol
from zerobatch.config import ModelConfig
from zerobatch.errors import BadRequest, ConfigError, HandlerError, PredictionError, ProtocolError

log = logging.getLogger(__name__)

#: Longest error message sent on the wire; the rest is in the worker's log.
MAX_ERROR_MESSAGE_CHARS = 4000
#: TorchServe's status for out-of-memory failures ("Out of resources").
OUT_OF_RESOURCES_STATUS = 507

_REPLY_HEAD = (protocol.VERSION, protocol.W_REPLY)


class Service:
    """One loaded model version: its handler entry point and the Context it runs with."""

    def __init__(self, entry_point: EntryPoint, context: Context) -> None:
        self.entry_point = entry_point
        self.context = context

    @classmethod
    def load(cls, model: ModelConfig, gpu_id: int | None = None) -> "Service":
        """Read the model directory, resolve the handler and initialize it."""
        model_dir = os.path.abspath(model.path)
        manifest = read_manifest(model_dir)
        handler = manifest["model"]["handler"]
        add_to_sys_path(model_dir)
        context = Context(model.name, model_dir, manifest, model.batch_size, gpu_id,
                          metrics=MetricsCache(model.name),
                          model_yaml_config=read_model_yaml_config(model_dir, manifest))
        entry_point, initialize = load_entry_point(model_dir, handler)
        try:
            initialize(context)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"handler {handler!r} of {manifest_file(model_dir)} failed to "
                              f"initialize: {type(exc).__name__}: {exc}") from exc
        log.info("model %s/%s loaded from %s (handler %s)", model.name, model.version,
                 model_dir, handler)
        return cls(entry_point, context)

    def run_batch(self, batch_id: int, items: Sequence[tuple[Any, Any]]) -> list:
        """Run one BATCH's (meta, body) items; return the W_REPLY message frames."""
        data: list[dict[str, Any]] = []
        processors: list[RequestProcessor] = []
        request_ids: dict[int, str] = {}
        rejected: dict[int, tuple] = {}
        for position, (meta, body) in enumerate(items):
            try:
                content_type, headers, request_id = protocol.parse_meta(meta)
            except ProtocolError as exc:
                rejected[position] = _error(BadRequest.code, f"bad request meta: {exc}",
                                            BadRequest.http_status)
                continue
            request_header: dict[str, Any] = {"body": {"content-type": content_type}}
            if headers:
                request_header.update(headers)
            request_ids[len(data)] = request_id or f"{batch_id}-{position}"
            processors.append(RequestProcessor(request_header))
            data.append({"body": decode_body(content_type, body)})

        triples = self._call(data, processors, request_ids) if data else []
        frames = [*_REPLY_HEAD, protocol.encode_batch_id(batch_id)]
        if rejected:
            answered = iter(triples)
            for position in range(len(items)):
                frames.extend(rejected.get(position) or next(answered))
        else:
            for triple in triples:
                frames.extend(triple)
        return frames

    def _call(self, data: list, processors: list[RequestProcessor],
              request_ids: dict[int, str]) -> list[tuple]:
        context = self.context
        context.request_ids = request_ids
        context.request_processor = processors
        context.metrics.reset(request_ids)
        count = len(data)
        start_ns = time.monotonic_ns()
        try:
            results = self.entry_point(data, context)
        except Exception as exc:
            log.error("handler of %s failed on a batch of %d (request ids %s)",
                      context.model_name, count, ", ".join(request_ids.values()), exc_info=True)
            return [_handler_failure(exc)] * count
        if not isinstance(results, list):
            return [_error(HandlerError.code, f"handler returned {type(results).__name__}, "
                           f"expected a list with one result for each of {count} requests",
                           HandlerError.http_status)] * count
        if len(results) != count:
            return [_error(HandlerError.code, f"handler returned {len(results)} results for "
                           f"{count} requests", HandlerError.http_status)] * count
        context.metrics.add_time("PredictionTime", (time.monotonic_ns() - start_ns) / 1e6)
        return [_reply(index, value, processors[index]) for index, value in enumerate(results)]


def _reply(index: int, value: Any, processor: RequestProcessor) -> tuple:
    try:
        body, content_type = encode_value(value)
    except (TypeError, ValueError) as exc:
        log.warning("result %d of type %s cannot be serialized: %s", index,
                    type(value).__name__, exc)
        return _error(HandlerError.code, f"result {index} cannot be serialized: "
                      f"{type(exc).__name__}: {exc}", HandlerError.http_status)
    headers = processor.get_response_headers()
    if headers:
        content_type = headers.get("content-type") or content_type
        headers = {str(k): str(v) for k, v in headers.items() if k != "content-type"} or None
    else:
        headers = None
    meta = protocol.encode_reply_meta(processor.get_response_status_code(), content_type,
                                      headers)
    if len(meta) > protocol.MAX_HEADER_BYTES:
        return _error(HandlerError.code, f"response headers of result {index} take "
                      f"{len(meta)} bytes, more than {protocol.MAX_HEADER_BYTES}",
                      HandlerError.http_status)
    return protocol.REPLY, meta, body


def _handler_failure(exc: Exception) -> tuple:
    error_code = getattr(exc, "error_code", None)
    if isinstance(error_code, int) and hasattr(exc, "message"):  # ts PredictionException
        status = error_code if 400 <= error_code <= 599 else HandlerError.http_status
        return _error(PredictionError.code, str(exc.message), status)
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or "out of memory" in message.lower():
        return _error(HandlerError.code, message, OUT_OF_RESOURCES_STATUS)
    return _error(HandlerError.code, message, HandlerError.http_status)


def _error(code: str, message: str, status: int) -> tuple:
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[:MAX_ERROR_MESSAGE_CHARS] + "... (truncated; see the worker log)"
    return protocol.ERROR, protocol.encode_error_info(code, message, status), b""
