"""The Open Inference Protocol (KServe v2) over HTTP on the inference port.

    GET  /v2                                          server metadata
    GET  /v2/health/live                              200 while the broker answers a ping
    GET  /v2/health/ready                             200 once every model has a live worker
    GET  /v2/models/{model}[/versions/{version}]      model metadata (inputs/outputs: [])
    GET  /v2/models/{model}[/versions/{version}]/ready
    POST /v2/models/{model}[/versions/{version}]/infer

An infer request is checked and packed here (api/tensors.py) and sent to the model as one
request of content type application/x-zerobatch-tensors, which the worker decodes into numpy
arrays for the handler (worker/tensors.py); the handler's result comes back as JSON and is
answered as v2 outputs, JSON or binary (docs/open-inference.md). Errors are v2's, `{"error":
message}`: 400 for a malformed request, 404 for an unknown model, the broker's status
otherwise (503 queue full, 504 deadline). With token authorization on, every route but
/v2/health/* needs the inference key, as /predictions does. Infer requests are counted in the
request metrics as predictions are (ts_inference_requests_total, zerobatch_request_seconds).

Model metadata and readiness come from the broker's `models` control call: names, versions,
which is the default and which has a live worker (no paths), which the broker answers to
anyone on its client endpoint, like `ping` and `ready`.
"""

from __future__ import annotations

import json
import logging
from time import monotonic_ns
from typing import Any

import falcon
import falcon.asgi

from zerobatch import __version__
from zerobatch.api.http_helpers import (
    REQUEST_ID_HEADER,
    TIMEOUT_HEADER,
    read_body,
    timeout_from_header,
    valid_request_id,
)
from zerobatch.api.tensors import (
    TENSORS_TYPE,
    TensorError,
    encode_response,
    handler_result,
    parse_request,
    response_outputs,
)
from zerobatch.api.token_auth import AUTHORIZATION_FAILED, TokenCheck
from zerobatch.errors import HandlerError, ModelNotFound, ServingError

log = logging.getLogger(__name__)

JSON = "application/json"
HEADER_LENGTH = "inference-header-content-length"
#: how long a health, metadata or readiness call waits for the broker
CONTROL_TIMEOUT_MS = 2000
SERVER_METADATA = json.dumps({"name": "zerobatch", "version": __version__,
                              "extensions": ["binary_tensor_data"]}).encode()
#: the platform model metadata names
PLATFORM = "zerobatch"


def model_entries(models: Any, model: str, version: str | None) -> list[dict]:
    """The entries of a `models` answer for model (only that version when one is named)."""
    return [entry for entry in (models if isinstance(models, list) else [])
            if isinstance(entry, dict) and entry.get("modelName") == model
            and (not version or entry.get("modelVersion") == version)]


def entries_ready(entries: list[dict], version: str | None) -> bool:
    """Whether the version has a live worker; without one named, the default version speaks
    for the model."""
    if not version:
        entries = [entry for entry in entries if entry.get("default")] or entries
    return any(entry.get("ready") for entry in entries)


def not_found_message(model: str, version: str | None) -> str:
    return (f"Model {model} not found" if not version
            else f"Model {model} version {version} not found")


def _error(resp: falcon.asgi.Response, status: int, message: str) -> None:
    resp.status = status
    resp.content_type = JSON
    resp.data = json.dumps({"error": message}).encode()


class _Routes:
    """What every v2 resource shares: the broker's client and the inference key's check."""

    def __init__(self, holder: Any, config: Any, metrics: Any = None) -> None:
        self.holder = holder
        self.metrics = metrics
        self.check = TokenCheck(config.key_file).check if config.key_file else None
        self.limit = config.max_request_bytes
        self.default_timeout_ms = config.default_timeout_ms

    def authorized(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> bool:
        check = self.check
        if check is None or check("inference", req.headers.get("authorization")):
            return True
        _error(resp, 400, AUTHORIZATION_FAILED)
        return False

    async def authorized_entries(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                                 model: str, version: str | None) -> list[dict] | None:
        """versions() for a request that carries the key; None when answered already."""
        if not self.authorized(req, resp):
            return None
        return await self.versions(resp, model, version)

    async def versions(self, resp: falcon.asgi.Response, model: str,
                       version: str | None) -> list[dict] | None:
        """The model's entries (the one version when named), or None answered 404/503."""
        try:
            answer = await self.holder.get().control("models", timeout_ms=CONTROL_TIMEOUT_MS)
        except ServingError as exc:
            log.info("v2 metadata: the broker did not describe its models: %s", exc)
            _error(resp, 503, "the server could not describe its models")
            return None
        entries = model_entries(answer.get("models"), model, version)
        if not entries:
            _error(resp, 404, not_found_message(model, version))
            return None
        return entries


class ServerMetadata:
    def __init__(self, routes: _Routes) -> None:
        self._routes = routes

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if self._routes.authorized(req, resp):
            resp.content_type = JSON
            resp.data = SERVER_METADATA


class Live:
    def __init__(self, routes: _Routes) -> None:
        self._routes = routes

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = JSON
        if await self._routes.holder.get().ping(CONTROL_TIMEOUT_MS):
            resp.data = b'{"live":true}'
        else:
            _error(resp, 503, "the broker does not answer")


class Ready:
    def __init__(self, routes: _Routes) -> None:
        self._routes = routes

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        try:
            answer = await self._routes.holder.get().control("ready",
                                                             timeout_ms=CONTROL_TIMEOUT_MS)
        except ServingError:
            _error(resp, 503, "the broker does not answer")
            return
        if answer.get("ready") is True:
            resp.content_type = JSON
            resp.data = b'{"ready":true}'
        else:
            _error(resp, 503, "models are loading")


class ModelMetadata:
    def __init__(self, routes: _Routes) -> None:
        self._routes = routes

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     model: str, version: str | None = None) -> None:
        entries = await self._routes.authorized_entries(req, resp, model, version)
        if entries is None:
            return
        resp.content_type = JSON
        resp.data = json.dumps({
            "name": model, "versions": [str(entry.get("modelVersion")) for entry in entries],
            "platform": PLATFORM, "inputs": [], "outputs": []}).encode()


class ModelReady:
    def __init__(self, routes: _Routes) -> None:
        self._routes = routes

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     model: str, version: str | None = None) -> None:
        entries = await self._routes.authorized_entries(req, resp, model, version)
        if entries is None:
            return
        if entries_ready(entries, version):
            resp.content_type = JSON
            resp.data = json.dumps({"name": model, "ready": True}).encode()
        else:
            _error(resp, 400, f"Model {model} is not ready")


class Infer:
    def __init__(self, routes: _Routes) -> None:
        self._routes = routes

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                      model: str, version: str | None = None) -> None:
        start_ns = monotonic_ns()
        routes = self._routes
        if not routes.authorized(req, resp):
            return
        headers = req.headers
        if headers.get("content-encoding", "identity").lower() != "identity":
            _error(resp, 400, "Content-Encoding is not supported; send the body uncompressed")
            return
        try:
            timeout = headers.get(TIMEOUT_HEADER)
            timeout_ms = (routes.default_timeout_ms if timeout is None
                          else timeout_from_header(timeout, routes.default_timeout_ms))
            body = await read_body(req, routes.limit)
            request = parse_request(body, headers.get(HEADER_LENGTH))
        except (TensorError, ServingError) as exc:
            status = getattr(exc, "http_status", 400)
            _error(resp, status, getattr(exc, "message", None) or str(exc))
            return
        request_id = headers.get(REQUEST_ID_HEADER)
        if request_id is not None and valid_request_id(request_id):
            resp.set_header(REQUEST_ID_HEADER, request_id)
        else:
            request_id = None
        metrics = routes.metrics
        try:
            reply = await routes.holder.get().predict(
                model, request.body, version=version, timeout_ms=timeout_ms,
                content_type=TENSORS_TYPE, headers=headers, request_id=request_id)
        except ServingError as exc:
            if metrics is not None and not isinstance(exc, ModelNotFound):
                metrics.record(model, version, start_ns, answered=isinstance(exc, HandlerError))
            _error(resp, exc.http_status, exc.message)
            return
        if metrics is not None:
            metrics.record(model, version, start_ns)
        if reply.status >= 400:
            _error(resp, reply.status, reply.body.decode("utf-8", "replace")[:4000])
            return
        try:
            result = handler_result(reply.content_type, reply.body)
            body, header_length = encode_response(request, response_outputs(result), model,
                                                  version)
        except (TensorError, ValueError, RecursionError) as exc:
            _error(resp, 500, str(exc))
            return
        if header_length is None:
            resp.content_type = JSON
        else:
            resp.content_type = "application/octet-stream"
            resp.set_header("Inference-Header-Content-Length", str(header_length))
        resp.data = body


def add_open_inference_routes(app: Any, holder: Any, config: Any, metrics: Any = None) -> None:
    """Add the /v2 routes (the module docstring) to the inference app; metrics: where infer
    requests are counted (api/request_metrics.py), or None."""
    routes = _Routes(holder, config, metrics)
    app.add_route("/v2", ServerMetadata(routes))
    app.add_route("/v2/health/live", Live(routes))
    app.add_route("/v2/health/ready", Ready(routes))
    metadata, ready, infer = ModelMetadata(routes), ModelReady(routes), Infer(routes)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.add_route(base, metadata)
        app.add_route(base + "/ready", ready)
        app.add_route(base + "/infer", infer)
