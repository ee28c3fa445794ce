"""The HTTP management app: TorchServe 0.12's management API as a Falcon ASGI app over the
broker's control calls (`describe`, `scale`).

    OPTIONS /                                     the OpenAPI description (api/openapi/)
    *       /api-description                      the same (TorchServe's deprecated path)
    GET     /models?limit=&next_page_token=       each model's default version, by name
    GET     /models/{name}[/{version}|/all]       TorchServe's describe array, plus "zerobatch"
    PUT     /models/{name}[/{version}]            scale: min_worker, max_worker, synchronous,
                                                  timeout (and model_version)
    OPTIONS /models/{name}[/{version}]            the model's management API description
    POST    /models                               501: the broker cannot register yet
    DELETE  /models/{name}[/{version}]            501: ... nor unregister
    PUT     /models/{name}/{version}/set-default  200 for the current default, else 501

Paths, parameters, JSON (Gson's pretty printing and a final newline), status codes and
messages are TorchServe's (http/api/rest/ManagementRequestHandler.java and util/ApiUtils.java
at v0.12.0), errors in its {"code", "type", "message"} shape with the Java exception's name;
api.management_helpers has the details and the few deliberate differences (bad numbers in a
scale call are refused, not read as the default; a synchronous scale waits at most `timeout`
seconds (at most MAX_SCALE_WAIT_S) and then answers TorchServe's 210 "Workers scaling in
progress...").

`control` is anything with an async `control(op, **args)`: the AsyncClient of the broker's
control socket (or a CURVE client) in the server, a fake in the unit tests. The app neither
creates nor closes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import falcon
import falcon.asgi

from zerobatch import __version__
from zerobatch.api.management_helpers import (
    JSON,
    METHOD_NOT_ALLOWED_MESSAGE,
    NOT_FOUND_MESSAGE,
    ApiError,
    bad_request,
    error_answer,
    error_body,
    java_bool,
    lenient_int,
    list_page,
    model_openapi,
    not_implemented,
    openapi,
    param,
    select,
    strict_int,
    ts_describe,
    ts_json,
    versions_of,
)
from zerobatch.errors import ServingError

__all__ = ["create_management_app"]

log = logging.getLogger(__name__)

#: how long one describe or scale call may wait for the broker
CONTROL_TIMEOUT_MS = 5000
#: how often a synchronous scale call asks the broker how many workers the model has
SCALE_POLL_S = 0.1
#: a synchronous scale call's wait when `timeout` is -1 and the broker reports no
#: startupTimeout for the model: TorchServe's default startup timeout
DEFAULT_SCALE_WAIT_S = 120
#: the longest a synchronous scale call waits, whatever its `timeout`
MAX_SCALE_WAIT_S = 3600
#: the longest pause between two describe calls of a synchronous scale call (the pause
#: grows from the app's poll_s, so long waits cost the broker little)
MAX_SCALE_POLL_S = 1.0


class _Broker:
    """The control calls the resources make, each bounded by CONTROL_TIMEOUT_MS."""

    def __init__(self, control: Any) -> None:
        self._control = control

    async def describe(self) -> dict:
        return await self._control.control("describe", timeout_ms=CONTROL_TIMEOUT_MS)

    async def scale(self, name: str, version: str | None, workers: int) -> dict:
        args: dict[str, Any] = {"model": name, "workers": workers}
        if version is not None:
            args["version"] = version
        return await self._control.control("scale", timeout_ms=CONTROL_TIMEOUT_MS, **args)


def _json(resp: falcon.asgi.Response, value: Any, status: int = 200) -> None:
    resp.status = status
    resp.content_type = JSON
    resp.data = ts_json(value)


def _status(resp: falcon.asgi.Response, message: str, status: int = 200) -> None:
    """A StatusResponse (http/StatusResponse.java: only "status" is exposed)."""
    _json(resp, {"status": message}, status)


class ApiDescriptionResource:
    """OPTIONS / (any other method: 405), and every method of /api-description, as
    http/api/rest/ApiDescriptionRequestHandler.java."""

    def __init__(self, document: bytes, any_method: bool) -> None:
        self._document = document
        if any_method:
            self.on_get = self.on_post = self.on_put = self.on_delete = self.on_options

    async def on_options(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = JSON
        resp.data = self._document


class ModelsResource:
    """/models: the list (GET); registration (POST) is not possible yet."""

    def __init__(self, broker: _Broker) -> None:
        self._broker = broker

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        # ManagementRequestHandler.handleListModels: bad numbers are the defaults
        limit = lenient_int(req.params, "limit", 100)
        page_token = lenient_int(req.params, "next_page_token", 0)
        described = await self._broker.describe()
        defaults = [(entry.get("modelName"), entry.get("modelUrl"))
                    for entry in described.get("models", ()) if entry.get("default")]
        _json(resp, list_page(defaults, limit, page_token))

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        raise not_implemented(
            "Registering a model (POST /models) is not supported yet: the broker cannot load "
            "a model while it runs; zerobatch serves the models given at start (--models).")

    async def on_options(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        raise falcon.HTTPMethodNotAllowed(["GET", "POST"])


class ModelResource:
    """/models/{model_name}[/{model_version}]: describe, scale, unregister, description."""

    def __init__(self, broker: _Broker, poll_s: float) -> None:
        self._broker = broker
        self._poll_s = poll_s

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     model_name: str, model_version: str | None = None) -> None:
        entries = select(await self._broker.describe(), model_name, model_version,
                         all_versions=True)
        # handleDescribeModel: customized=true (except for "all") asks the handler itself
        if java_bool(req.params, "customized") and model_version != "all":
            raise not_implemented(
                "Customized model metadata (customized=true) is not supported yet: the broker "
                "cannot send a describe request to the model's handler.")
        _json(resp, [ts_describe(entry) for entry in entries])

    async def on_put(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     model_name: str, model_version: str | None = None) -> None:
        """handleScaleModel and ApiUtils.updateModelWorkers."""
        params = req.params
        min_workers = strict_int(params, "min_worker", 1)
        max_workers = strict_int(params, "max_worker", min_workers)
        synchronous = java_bool(params, "synchronous")
        timeout_s = strict_int(params, "timeout", -1)
        if model_version is None:
            model_version = param(params, "model_version")
        if max_workers < min_workers:
            raise bad_request("max_worker cannot be less than min_worker.")
        if min_workers < 0:
            raise bad_request(f"min_worker cannot be negative, got {min_workers}.")
        entry = select(await self._broker.describe(), model_name, model_version)[0]
        await self._broker.scale(model_name, model_version, min_workers)
        if not synchronous:
            _status(resp, "Processing worker updates...", 202)
            return
        if timeout_s < 0:
            startup_s = entry.get("startupTimeout")
            timeout_s = startup_s if isinstance(startup_s, int) else DEFAULT_SCALE_WAIT_S
        outcome = await self._wait_for_workers(model_name, model_version, min_workers,
                                               min(timeout_s, MAX_SCALE_WAIT_S))
        if outcome == "scaled":
            message = f"Workers scaled to {min_workers} for model: {model_name}"
            if model_version is not None:
                message += f", version: {model_version}"
            _status(resp, message)
        elif outcome == "scaling":
            _status(resp, "Workers scaling in progress...", 210)
        else:  # Java prints a null version as "null"
            raise ApiError(500, "InternalServerException",
                           f"Failed to start workers for model {model_name} version: "
                           f"{'null' if model_version is None else model_version}")

    async def _wait_for_workers(self, name: str, version: str | None, workers: int,
                                timeout_s: int) -> str:
        """"scaled" once the model has exactly `workers` live workers (retiring ones count
        until they are gone), "failed" when a worker failed to load it meanwhile (the
        broker's loadError), "scaling" when timeout_s passes first."""
        deadline = time.monotonic() + timeout_s
        pause_s = self._poll_s
        while True:
            entry = select(await self._broker.describe(), name, version)[0]
            live = len(entry.get("workers") or ())
            if live == workers:
                return "scaled"
            if live < workers and entry.get("loadError") is not None:
                return "failed"
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                return "scaling"
            await asyncio.sleep(min(pause_s, left_s))
            pause_s = min(pause_s * 1.5, MAX_SCALE_POLL_S)

    async def on_delete(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                        model_name: str, model_version: str | None = None) -> None:
        """ApiUtils.unregisterModel's refusals; the unregistration itself is not possible."""
        entries = versions_of(await self._broker.describe(), model_name)
        target = select({"models": entries}, model_name, model_version)[0]
        if target.get("default") and len(entries) > 1:
            # ModelVersionedRefs.removeVersionModel: InvalidModelVersionException is an
            # IllegalArgumentException, which HttpRequestHandler answers 403
            raise ApiError(403, "InvalidModelVersionException",
                           f"Cannot remove default version for model {model_name}")
        raise not_implemented(
            "Unregistering a model (DELETE /models/{name}) is not supported yet: the broker "
            "cannot remove a model version while it runs.")

    async def on_options(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                         model_name: str, model_version: str | None = None) -> None:
        select(await self._broker.describe(), model_name, model_version)
        _json(resp, model_openapi(model_name, __version__))


class SetDefaultResource:
    """PUT /models/{model_name}/{model_version}/set-default (ApiUtils.setDefault)."""

    def __init__(self, broker: _Broker) -> None:
        self._broker = broker

    async def on_put(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     model_name: str, model_version: str) -> None:
        entries = versions_of(await self._broker.describe(), model_name)
        target = [entry for entry in entries if entry.get("modelVersion") == model_version]
        if not target:  # ModelVersionedRefs.setDefaultVersion's words (no colons)
            raise ApiError(404, "ModelVersionNotFoundException",
                           f"Model version {model_version} does not exist for model "
                           f"{model_name}")
        if not target[0].get("default"):
            raise not_implemented(
                "Setting the default version is not supported yet: the broker cannot switch "
                f"model {model_name}'s default version while it runs.")
        # already the default: what TorchServe answers, and true
        _status(resp, f'Default version successfully updated for model "{model_name}" to '
                      f'"{model_version}"')

    async def on_options(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                         model_name: str, model_version: str) -> None:
        raise falcon.HTTPMethodNotAllowed(["PUT"])


def _serialize_http_error(req: falcon.Request, resp: falcon.Response,
                          error: falcon.HTTPError) -> None:
    """falcon's own errors in TorchServe's words: ResourceNotFoundException (an unknown path),
    MethodNotAllowedException, and the status's own name otherwise."""
    status = error.status_code
    if status == 404:
        type_name, message = "ResourceNotFoundException", NOT_FOUND_MESSAGE
    elif status == 405:
        type_name, message = "MethodNotAllowedException", METHOD_NOT_ALLOWED_MESSAGE
    else:
        type_name = "BadRequestException" if status == 400 else type(error).__name__
        message = error.description or error.title or str(status)
    resp.content_type = JSON
    resp.data = error_body(status, type_name, message)


async def _handle_serving_error(req: falcon.asgi.Request, resp: falcon.asgi.Response,
                                error: ServingError, params: dict) -> None:
    resp.status, resp.data = error_answer(error)
    resp.content_type = JSON
    if resp.status >= 500 and not isinstance(error, ApiError):
        log.warning("%s %s -> %s: %s", req.method, req.path, resp.status, error.message)


async def _handle_unexpected(req: falcon.asgi.Request, resp: falcon.asgi.Response,
                             error: Exception, params: dict) -> None:
    log.exception("unexpected error on %s %s", req.method, req.path, exc_info=error)
    resp.status = 500
    resp.content_type = JSON
    resp.data = error_body(500, "InternalServerException",
                           f"internal server error: {type(error).__name__}")


def create_management_app(control: Any, *, poll_s: float = SCALE_POLL_S) -> falcon.asgi.App:
    """The management app over `control` (see the module docstring); poll_s is how often a
    synchronous scale call asks the broker for the model's workers."""
    broker = _Broker(control)
    document = ts_json(openapi(__version__))
    app = falcon.asgi.App()
    # TorchServe splits the path on "/": /models/ is /models
    app.req_options.strip_url_path_trailing_slash = True
    app.add_route("/", ApiDescriptionResource(document, any_method=False))
    app.add_route("/api-description", ApiDescriptionResource(document, any_method=True))
    app.add_route("/models", ModelsResource(broker))
    model = ModelResource(broker, poll_s)
    app.add_route("/models/{model_name}", model)
    app.add_route("/models/{model_name}/{model_version}", model)
    app.add_route("/models/{model_name}/{model_version}/set-default", SetDefaultResource(broker))
    app.set_error_serializer(_serialize_http_error)
    app.add_error_handler(Exception, _handle_unexpected)
    app.add_error_handler(ServingError, _handle_serving_error)
    return app
