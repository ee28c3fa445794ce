"""The `Context` a handler sees: TorchServe's `ts.context.Context`, method for method.

A worker builds one Context when it loads its model and hands that same object to
`initialize(context)` and to every `handle(data, context)` call, as TorchServe does (handlers
keep `self.context` from `initialize` and read request headers through it later). What belongs
to one batch (`request_ids`, one `RequestProcessor` per request) is replaced before each call,
so nothing leaks from one batch into the next.

`context.metrics` is TorchServe's metric cache (worker.compat.metrics_cache.MetricsCache): what
handlers record through it is a list of records that the worker clears before each handler
call and exports to prometheus_client after it (worker.metrics_export).
"""

from __future__ import annotations

import os
from typing import Any

import zerobatch
from zerobatch.worker.compat.metrics_cache import MetricsCache

__all__ = ["Context", "MetricsCache", "RequestProcessor"]


class RequestProcessor:
    """One request's headers in, and its response status and headers out."""

    __slots__ = ("_request_header", "_status_code", "_reason_phrase", "_response_header")

    def __init__(self, request_header: dict) -> None:
        self._request_header = request_header
        self._status_code = 200
        self._reason_phrase: str | None = None
        self._response_header: dict[str, str] = {}

    def get_request_property(self, key: str) -> Any:
        """A request header (or a body part's {"content-type": ...}). HTTP header names arrive
        lowercased, as ASGI hands them on, while TorchServe kept the client's spelling: so
        "Content-Type" that is not found as written is looked up as "content-type"."""
        headers = self._request_header
        value = headers.get(key)
        if value is None:
            lowered = key.lower()
            if lowered != key:
                value = headers.get(lowered)
        return value

    def get_request_properties(self) -> dict:
        return self._request_header

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        self._status_code = code
        self._reason_phrase = reason_phrase

    def get_response_status_code(self) -> int:
        return self._status_code

    def get_response_status_phrase(self) -> str | None:
        return self._reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        self._response_header[key] = value

    def get_response_headers(self) -> dict[str, str]:
        return self._response_header

    def get_response_header(self, key: str) -> str | None:
        return self._response_header.get(key)


class Context:
    """What a handler knows about its model, its worker and the batch it is running."""

    def __init__(self, model_name: str, model_dir: str, manifest: dict,
                 batch_size: int, gpu: int | None, server_version: str = zerobatch.__version__,
                 limit_max_image_pixels: bool = True, metrics: MetricsCache | None = None,
                 model_yaml_config: dict | None = None) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            "server_name": zerobatch.SERVER_NAME,
            "server_version": server_version,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.model_yaml_config = model_yaml_config if model_yaml_config is not None else {}
        self.request_ids: dict[int, str] | None = None
        self.request_processor: list[RequestProcessor] | None = None
        self.metrics = metrics if metrics is not None else MetricsCache(model_name)
        self.cl_socket = None  # TorchServe's streaming socket; zerobatch streams through:
        #: send_partial(index, value, status=None): set by the worker's Service; it sends one
        #: intermediate chunk for request `index` of the running batch (see worker.service)
        self.send_partial: Any = None
        #: the request headers of sequence batching (broker/sequences.py), named as
        #: TorchServe's context names them, and renamed by the same variables
        self.header_key_sequence_id = os.environ.get("TS_REQUEST_SEQUENCE_ID",
                                                     "ts_request_sequence_id")
        self.header_key_sequence_start = os.environ.get("TS_REQUEST_SEQUENCE_START",
                                                        "ts_request_sequence_start")
        self.header_key_sequence_end = os.environ.get("TS_REQUEST_SEQUENCE_END",
                                                      "ts_request_sequence_end")

    @property
    def system_properties(self) -> dict[str, Any]:
        return self._system_properties

    def get_request_id(self, idx: int = 0) -> str | None:
        if self.request_ids is None:
            return None
        return self.request_ids.get(idx)

    def get_sequence_id(self, idx: int) -> str | None:
        """The id of the sequence request `idx` belongs to (a model with sequenceBatching)."""
        return self.request_processor[idx].get_request_property(self.header_key_sequence_id)

    def get_request_header(self, idx: int, key: str) -> Any:
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict:
        return self.request_processor[idx].get_request_properties()

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> str | None:
        return self.get_response_headers(idx).get("content-type")

    def get_response_status(self, idx: int) -> tuple[int, str | None]:
        processor = self.request_processor[idx]
        return processor.get_response_status_code(), processor.get_response_status_phrase()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        processors = self.request_processor
        if processors is not None and processors[idx] is not None:
            processors[idx].report_status(code, reason_phrase=phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for processor in self.request_processor or ():
            processor.report_status(code, reason_phrase=phrase)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self.request_processor[idx].get_response_headers()

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.request_processor[idx].add_response_property(key, value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Context) and self.__dict__ == other.__dict__
