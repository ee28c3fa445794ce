"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`'s RPCs answered
from the broker, as the HTTP /v2 routes answer them (api/open_inference.py).

    ServerLive      live while the broker answers a ping
    ServerReady     ready once every model has a live worker
    ServerMetadata  name "zerobatch", its version
    ModelMetadata   name, versions, platform "zerobatch" (no inputs or outputs declared)
    ModelReady      whether the version (without one: the default) has a live worker
                    (false for a model the server does not have)
    ModelInfer      one request to the model, its inputs checked and packed as for HTTP

An infer request's inputs come as `raw_input_contents` (one per input, raw little-endian
bytes, BYTES elements length-prefixed: what tritonclient sends) or as typed `contents`; both
are checked by api/tensors.py's rules and sent to the worker as one request of content type
TENSORS_TYPE, so gRPC requests batch with every other request of the model. The outputs come
back as `raw_output_contents`, one per output, which is what Triton answers and what
tritonclient's `as_numpy` reads.

Errors are gRPC statuses with a message: INVALID_ARGUMENT for a malformed request, NOT_FOUND
for an unknown model or version, UNAUTHENTICATED for a missing or wrong inference key (with
token authorization on, every RPC but ServerLive and ServerReady needs `authorization: Bearer
KEY` in the metadata), UNAVAILABLE for a full queue or a broker that does not answer,
DEADLINE_EXCEEDED for a passed deadline (the call's gRPC deadline, or the default timeout),
INTERNAL when the handler fails or its result is no tensor. Predictions are counted in the
request metrics as the HTTP front end counts them (ts_inference_requests_total,
zerobatch_request_seconds), when the process has a RequestMetrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import monotonic_ns
from typing import Any

import grpc

from zerobatch import __version__
from zerobatch.api import grpc_messages as messages
from zerobatch.api.http_helpers import REQUEST_ID_HEADER, valid_request_id
from zerobatch.api.open_inference import (
    CONTROL_TIMEOUT_MS,
    PLATFORM,
    entries_ready,
    model_entries,
    not_found_message,
)
from zerobatch.api.tensors import (
    BYTES,
    TENSORS_TYPE,
    InferRequest,
    TensorError,
    check_input,
    handler_result,
    infer_request,
    join_bytes,
    pack_output,
    response_outputs,
    select_outputs,
)
from zerobatch.api.token_auth import AUTHORIZATION_FAILED, TokenCheck
from zerobatch.errors import HandlerError, ModelNotFound, ServingError

log = logging.getLogger(__name__)

#: HTTP-style statuses (the broker's and the worker's) as gRPC codes
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.UNAVAILABLE, 501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
#: datatype -> the InferTensorContents field that holds it (FP16 has none: raw only)
CONTENTS_FIELDS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", BYTES: "bytes_contents",
}


class RpcError(Exception):
    """An RPC's failure: its gRPC status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def status_code(http_status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP-style status (INTERNAL for other 5xx, INVALID_ARGUMENT 4xx)."""
    code = STATUS_CODES.get(http_status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if http_status < 500 else grpc.StatusCode.INTERNAL


def parameter_value(parameter: Any) -> Any:
    """An InferParameter's value (None when none of its oneof is set)."""
    which = parameter.WhichOneof("parameter_choice")
    return None if which is None else getattr(parameter, which)


def parameters_dict(parameters: Any) -> dict:
    return {key: parameter_value(value) for key, value in parameters.items()}


def parse_infer(request: Any) -> InferRequest:
    """A ModelInferRequest checked and packed for the worker; TensorError when malformed."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TensorError(f"raw_input_contents holds {len(raw)} entries for "
                          f"{len(request.inputs)} inputs: give one per input, or none")
    if not request.inputs:
        raise TensorError("the request has no inputs")
    packed = []
    for index, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": list(tensor.shape),
                                 "parameters": parameters_dict(tensor.parameters)}
        if raw:
            if tensor.HasField("contents"):
                raise TensorError(f"input {tensor.name!r} has both contents and "
                                  "raw_input_contents")
            entry["parameters"]["binary_data_size"] = len(raw[index])
            checked, _ = check_input(entry, index, raw[index], 0)
        elif tensor.datatype == BYTES:  # bytes elements: checked as their binary form
            joined = join_bytes(_contents(tensor))
            entry["parameters"]["binary_data_size"] = len(joined)
            checked, _ = check_input(entry, index, joined, 0)
        else:
            entry["data"] = _contents(tensor)
            checked, _ = check_input(entry, index, b"", 0)
        packed.append(checked)
    outputs = {output.name: True for output in request.outputs} if request.outputs else None
    if outputs is not None and "" in outputs:
        raise TensorError("a requested output has no name")
    parameters = parameters_dict(request.parameters)
    return infer_request(request.id or None, parameters, packed, outputs, True)


def _contents(tensor: Any) -> list:
    field = CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:
        raise TensorError(f"input {tensor.name!r}: {tensor.datatype or 'no datatype'} cannot "
                          "travel in contents; send it in raw_input_contents")
    return list(getattr(tensor.contents, field))


def infer_response(request: InferRequest, result: Any, model: str, version: str) -> Any:
    """The ModelInferResponse of a handler's result (decoded JSON); TensorError when it is no
    tensor or lacks a requested output."""
    response = messages.ModelInferResponse(model_name=model, model_version=version,
                                           id=request.request_id or "")
    for output in select_outputs(request, response_outputs(result)):
        response.outputs.add(name=output["name"], datatype=output["datatype"],
                             shape=output["shape"])
        response.raw_output_contents.append(
            pack_output(output["data"], output["datatype"], output["name"]))
    return response


class InferenceService:
    """The RPCs of the module docstring over one broker client; `handlers()` registers
    them on a grpc.aio server."""

    def __init__(self, client_factory: Callable[[], Any], key_file: str = "",
                 default_timeout_ms: int = 30_000, metrics: Any = None) -> None:
        #: makes the broker's AsyncClient inside the server's event loop (the first call)
        self._client_factory = client_factory
        self._client: Any = None
        self._check = TokenCheck(key_file).check if key_file else None
        self._default_timeout_ms = default_timeout_ms
        #: where predictions are counted (api/request_metrics.py RequestMetrics), or None
        self._metrics = metrics

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def handlers(self) -> grpc.GenericRpcHandler:
        methods = {}
        for rpc, (request_type, response_type) in messages.RPCS.items():
            behaviour = getattr(self, rpc)
            methods[rpc] = grpc.unary_unary_rpc_method_handler(
                self._answering(behaviour),
                request_deserializer=messages.CLASSES[request_type].FromString,
                response_serializer=messages.CLASSES[response_type].SerializeToString)
        return grpc.method_handlers_generic_handler(messages.SERVICE, methods)

    @staticmethod
    def _answering(behaviour: Callable) -> Callable:
        """behaviour, its RpcError turned into the call's status, and anything unexpected
        into INTERNAL with no detail (the log has it; grpc's own answer would carry the
        exception's text)."""
        async def rpc(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behaviour(request, context)
            except RpcError as exc:
                await context.abort(exc.code, exc.message)
            except Exception:
                log.exception("gRPC %s failed", behaviour.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        return rpc

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if self._check is None:
            return
        token = dict(context.invocation_metadata() or ()).get("authorization")
        if not self._check("inference", token):
            raise RpcError(grpc.StatusCode.UNAUTHENTICATED, AUTHORIZATION_FAILED)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        if not await self.client.ping(CONTROL_TIMEOUT_MS):
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "the broker does not answer")
        return messages.CLASSES["ServerLiveResponse"](live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        try:
            answer = await self.client.control("ready", timeout_ms=CONTROL_TIMEOUT_MS)
        except ServingError:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "the broker does not answer") from None
        return messages.CLASSES["ServerReadyResponse"](ready=answer.get("ready") is True)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        self._authorize(context)
        return messages.CLASSES["ServerMetadataResponse"](name="zerobatch",
                                                          version=__version__)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        self._authorize(context)
        entries = await self._entries(request.name, request.version)
        response = messages.ModelMetadataResponse(name=request.name, platform=PLATFORM)
        response.versions.extend(str(entry.get("modelVersion")) for entry in entries)
        return response

    async def ModelReady(self, request: Any, context: Any) -> Any:
        self._authorize(context)
        try:
            entries = await self._entries(request.name, request.version)
        except RpcError as exc:  # an unknown model is not ready, as Triton answers it
            if exc.code != grpc.StatusCode.NOT_FOUND:
                raise
            entries = []
        return messages.CLASSES["ModelReadyResponse"](
            ready=entries_ready(entries, request.version))

    async def _entries(self, model: str, version: str) -> list[dict]:
        try:
            answer = await self.client.control("models", timeout_ms=CONTROL_TIMEOUT_MS)
        except ServingError as exc:
            log.info("gRPC metadata: the broker did not describe its models: %s", exc)
            raise RpcError(grpc.StatusCode.UNAVAILABLE,
                           "the server could not describe its models") from None
        entries = model_entries(answer.get("models"), model, version)
        if not entries:
            raise RpcError(grpc.StatusCode.NOT_FOUND, not_found_message(model, version))
        return entries

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start_ns = monotonic_ns()
        self._authorize(context)
        if not request.model_name:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "model_name is empty")
        try:
            infer = parse_infer(request)
        except TensorError as exc:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        metadata = {key: value for key, value in (context.invocation_metadata() or ())
                    if isinstance(value, str)}
        request_id = metadata.get(REQUEST_ID_HEADER)
        if request_id is not None and not valid_request_id(request_id):
            request_id = None
        timeout_ms = self._default_timeout_ms
        remaining = context.time_remaining()
        if remaining is not None:
            timeout_ms = max(1, min(timeout_ms, int(remaining * 1000)))
        version = request.model_version or None
        metrics = self._metrics
        try:
            reply = await self.client.predict(
                request.model_name, infer.body, version=version, timeout_ms=timeout_ms,
                content_type=TENSORS_TYPE, headers=metadata, request_id=request_id)
        except ServingError as exc:
            if metrics is not None and not isinstance(exc, ModelNotFound):
                metrics.record(request.model_name, version, start_ns,
                               answered=isinstance(exc, HandlerError))
            raise RpcError(status_code(exc.http_status), exc.message) from None
        if metrics is not None:
            metrics.record(request.model_name, version, start_ns)
        if reply.status >= 400:
            raise RpcError(status_code(reply.status),
                           reply.body.decode("utf-8", "replace")[:4000])
        try:
            return infer_response(infer, handler_result(reply.content_type, reply.body),
                                  request.model_name, request.model_version)
        except (TensorError, ValueError, RecursionError) as exc:
            raise RpcError(grpc.StatusCode.INTERNAL, str(exc)) from None
