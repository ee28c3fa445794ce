"""The HTTP management app: TorchServe 0.12's management API as a Falcon ASGI app over the
broker's control calls (`describe`, `scale`, `register`, `unregister`, `set_default`).

    OPTIONS /                                     the OpenAPI description (api/openapi/)
    *       /api-description                      the same (TorchServe's deprecated path)
    GET     /models?limit=&next_page_token=       each model's default version, by name
    GET     /models/{name}[/{version}|/all]       TorchServe's describe array, plus "zerobatch"
    PUT     /models/{name}[/{version}]            scale: min_worker, max_worker, synchronous,
                                                  timeout (and model_version)
    OPTIONS /models/{name}[/{version}]            the model's management API description
    POST    /models                               register (url, model_name, batch_size,
                                                  max_batch_delay, initial_workers, synchronous,
                                                  response_timeout, startup_timeout; query or
                                                  JSON body): api/registration.py
    DELETE  /models/{name}[/{version}]            unregister
    PUT     /models/{name}/{version}/set-default  the version requests without one go to
    GET     /token?type=management|inference     with token authorization: a new key

POST and DELETE need the model API (`settings.enable_model_api`, --enable-model-api); without
it they answer TorchServe's 405. Registrations run one at a time; the archive is fetched and
prepared in threads (a download, `python -m zerobatch.broker.prepare_model`), so the app keeps
answering meanwhile, and a synchronous one waits for the workers as a synchronous scale does
(up to the model's startup timeout; a failure unregisters the model again and answers 500).

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
import dataclasses
import json
import logging
import os
import time
from typing import Any

import falcon
import falcon.asgi

from zerobatch import __version__
from zerobatch.api import registration
from zerobatch.api.management_helpers import (
    JSON,
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
    serialize_http_error,
    strict_int,
    ts_describe,
    ts_json,
    versions_of,
)
from zerobatch.api.token_auth import ManagementAuth, TokenCheck, TokenResource
from zerobatch.config import ManagementConfig, ModelConfig
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
#: the largest JSON body a registration call may send
MAX_REGISTER_BODY_BYTES = 64 * 1024
#: the longest pause between two describe calls of a synchronous scale call (the pause
#: grows from the app's poll_s, so long waits cost the broker little)
MAX_SCALE_POLL_S = 1.0


class _Broker:
    """The control calls the resources make, each bounded by CONTROL_TIMEOUT_MS."""

    def __init__(self, control: Any) -> None:
        self._control = control

    async def describe(self) -> dict:
        return await self._control.control("describe", timeout_ms=CONTROL_TIMEOUT_MS)

    async def scale(self, name: str, version: str | None, workers: int,
                    max_workers: int | None = None) -> dict:
        args: dict[str, Any] = {"model": name, "workers": workers,
                                "max_workers": workers if max_workers is None else max_workers}
        if version is not None:
            args["version"] = version
        return await self._control.control("scale", timeout_ms=CONTROL_TIMEOUT_MS, **args)

    async def register(self, model: ModelConfig) -> dict:
        return await self._control.control("register", timeout_ms=CONTROL_TIMEOUT_MS,
                                           model=dataclasses.asdict(model))

    async def unregister(self, name: str, version: str | None) -> dict:
        args: dict[str, Any] = {"model": name}
        if version is not None:
            args["version"] = version
        return await self._control.control("unregister", timeout_ms=CONTROL_TIMEOUT_MS,
                                           **args)

    async def set_default(self, name: str, version: str) -> dict:
        return await self._control.control("set_default", timeout_ms=CONTROL_TIMEOUT_MS,
                                           model=name, version=version)


async def wait_for_workers(broker: _Broker, name: str, version: str | None, workers: int,
                           timeout_s: float, poll_s: float) -> str:
    """"scaled" once the model has exactly `workers` live workers (retiring ones count
    until they are gone), "failed" when a worker failed to load it meanwhile (the
    broker's loadError), "scaling" when timeout_s passes first."""
    deadline = time.monotonic() + timeout_s
    pause_s = poll_s
    while True:
        entry = select(await broker.describe(), name, version)[0]
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
    """/models: the list (GET) and registration (POST, with the model API enabled)."""

    def __init__(self, broker: _Broker, settings: ManagementConfig | None,
                 poll_s: float) -> None:
        self._broker = broker
        self._settings = settings
        self._poll_s = poll_s
        #: one registration at a time: each extracts an archive, and two of the same model
        #: version must not race to the broker
        self._lock = asyncio.Lock()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        # ManagementRequestHandler.handleListModels: bad numbers are the defaults
        limit = lenient_int(req.params, "limit", 100)
        page_token = lenient_int(req.params, "next_page_token", 0)
        described = await self._broker.describe()
        defaults = [(entry.get("modelName"), entry.get("modelUrl") or None)
                    for entry in described.get("models", ()) if entry.get("default")]
        _json(resp, list_page(defaults, limit, page_token))

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """ApiUtils.registerModel: the parameters from the query string, or from a JSON body
        (Content-Type application/json); see api/registration.py for the steps."""
        settings = self._settings
        if settings is None or not settings.enable_model_api:
            raise falcon.HTTPMethodNotAllowed(["GET"])
        params = await register_params(req)
        url = registration.check_url(params.pop("url"), settings.allowed_urls)
        initial = params.get("initial_workers")
        params["initial_workers"] = settings.default_workers if initial is None else initial
        synchronous = params.pop("synchronous")
        async with self._lock:
            source = await asyncio.to_thread(registration.resolve, url, settings.model_store,
                                             settings.max_download_bytes,
                                             settings.allowed_urls)
            try:
                model = await asyncio.to_thread(self._prepare, source, url, params)
                await self._broker.register(model)
            except BaseException:
                registration.remove_download(source)
                raise
        workers = model.workers
        if not workers:
            _status(resp, f'Model "{model.name}" Version: {model.version} registered with 0 '
                          "initial workers. Use scale workers API to add workers for the "
                          "model.")
            return
        if not synchronous:
            _status(resp, "Processing worker updates...", 202)
            return
        outcome = await wait_for_workers(self._broker, model.name, model.version, workers,
                                         min(model.startup_timeout_s, MAX_SCALE_WAIT_S),
                                         self._poll_s)
        if outcome != "scaled":  # handleRegister's onError: the model goes again
            await self._broker.unregister(model.name, model.version)
            registration.remove_download(source)
            raise ApiError(500, "InternalServerException",
                           f"Failed to start workers for model {model.name} version: "
                           f"{model.version}")
        _status(resp, f'Model "{model.name}" Version: {model.version} registered with '
                      f"{workers} initial workers")

    def _prepare(self, source: registration.Source, url: str, params: dict) -> ModelConfig:
        settings = self._settings
        model = registration.model_config(source, url, params, settings.model_defaults)
        return registration.prepare(model, settings.run_dir, settings.install_py_dep_per_model,
                                    model.startup_timeout_s)

    async def on_options(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        raise falcon.HTTPMethodNotAllowed(["GET", "POST"])


#: the registration parameters that are integers (RegisterModelRequest)
_REGISTER_INTS = ("batch_size", "max_batch_delay", "initial_workers", "response_timeout",
                  "startup_timeout")
_REGISTER_TEXTS = ("url", "model_name", "handler", "runtime")


async def register_params(req: falcon.asgi.Request) -> dict:
    """POST /models's parameters, from a JSON body when the request has one (TorchServe reads
    the body instead of the query then), else from the query string; integers checked."""
    source: dict = req.params
    if (req.content_type or "").split(";")[0].strip().lower() == JSON:
        if (req.content_length or 0) > MAX_REGISTER_BODY_BYTES:
            raise falcon.HTTPContentTooLarge(
                description=f"a registration body is at most {MAX_REGISTER_BODY_BYTES} bytes")
        body = await req.stream.read(MAX_REGISTER_BODY_BYTES + 1)
        if len(body) > MAX_REGISTER_BODY_BYTES:
            raise falcon.HTTPContentTooLarge(
                description=f"a registration body is at most {MAX_REGISTER_BODY_BYTES} bytes")
        try:
            source = json.loads(body or b"{}")
        except (ValueError, RecursionError):
            raise bad_request("The request body is not valid JSON.") from None
        if not isinstance(source, dict):
            raise bad_request("The request body must be a JSON object.")
        source = {key: value if isinstance(value, str) else json.dumps(value)
                  for key, value in source.items() if value is not None}
    params: dict[str, Any] = {}
    for name in _REGISTER_TEXTS:
        value = param(source, name)
        params[name] = value.strip('"') if isinstance(value, str) else None
    for name in _REGISTER_INTS:
        params[name] = strict_int(source, name, -1) if param(source, name) is not None else None
    synchronous = param(source, "synchronous")
    params["synchronous"] = synchronous is None or synchronous.lower() == "true"
    return params


class ModelResource:
    """/models/{model_name}[/{model_version}]: describe, scale, unregister, description."""

    def __init__(self, broker: _Broker, settings: ManagementConfig | None,
                 poll_s: float) -> None:
        self._broker = broker
        self._settings = settings
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
        await self._broker.scale(model_name, model_version, min_workers, max_workers)
        if not synchronous:
            _status(resp, "Processing worker updates...", 202)
            return
        if timeout_s < 0:
            startup_s = entry.get("startupTimeout")
            timeout_s = startup_s if isinstance(startup_s, int) else DEFAULT_SCALE_WAIT_S
        outcome = await wait_for_workers(self._broker, model_name, model_version, min_workers,
                                         min(timeout_s, MAX_SCALE_WAIT_S), self._poll_s)
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

    async def on_delete(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                        model_name: str, model_version: str | None = None) -> None:
        """ApiUtils.unregisterModel, with the model API enabled: the version goes at once
        (its waiting requests are answered 503, its workers finish what they run); an
        archive that its registration downloaded is removed from the model store."""
        settings = self._settings
        if settings is None or not settings.enable_model_api:
            raise falcon.HTTPMethodNotAllowed(["GET", "PUT", "OPTIONS"])
        entries = versions_of(await self._broker.describe(), model_name)
        target = select({"models": entries}, model_name, model_version)[0]
        if target.get("default") and len(entries) > 1:
            # ModelVersionedRefs.removeVersionModel: InvalidModelVersionException is an
            # IllegalArgumentException, which HttpRequestHandler answers 403
            raise ApiError(403, "InvalidModelVersionException",
                           f"Cannot remove default version for model {model_name}")
        answer = await self._broker.unregister(model_name, target.get("modelVersion"))
        url = answer.get("url") or ""
        if url.lower().startswith(("http://", "https://")):
            registration.remove_download(registration.Source(
                os.path.join(settings.model_store, registration.file_name_of(url)),
                downloaded=True))
        _status(resp, f'Model "{model_name}" unregistered')

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
        if not any(entry.get("modelVersion") == model_version for entry in entries):
            # ModelVersionedRefs.setDefaultVersion's words (no colons)
            raise ApiError(404, "ModelVersionNotFoundException",
                           f"Model version {model_version} does not exist for model "
                           f"{model_name}")
        answer = await self._broker.set_default(model_name, model_version)
        _status(resp, answer["status"])

    async def on_options(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                         model_name: str, model_version: str) -> None:
        raise falcon.HTTPMethodNotAllowed(["PUT"])


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


def create_management_app(control: Any, *, key_file: str = "",
                          token_expiration_min: float = 60.0,
                          poll_s: float = SCALE_POLL_S,
                          settings: ManagementConfig | None = None) -> falcon.asgi.App:
    """The management app over `control` (see the module docstring); poll_s is how often a
    synchronous scale call asks the broker for the model's workers. With a key_file, every
    call needs the management key and /token rotates keys (api/token_auth.py), a new key
    valid for token_expiration_min minutes."""
    broker = _Broker(control)
    document = ts_json(openapi(__version__))
    check = TokenCheck(key_file) if key_file else None
    app = falcon.asgi.App(middleware=[ManagementAuth(check)] if check else [])
    # TorchServe splits the path on "/": /models/ is /models
    app.req_options.strip_url_path_trailing_slash = True
    app.add_route("/", ApiDescriptionResource(document, any_method=False))
    app.add_route("/api-description", ApiDescriptionResource(document, any_method=True))
    app.add_route("/models", ModelsResource(broker, settings, poll_s))
    model = ModelResource(broker, settings, poll_s)
    app.add_route("/models/{model_name}", model)
    app.add_route("/models/{model_name}/{model_version}", model)
    app.add_route("/models/{model_name}/{model_version}/set-default", SetDefaultResource(broker))
    if check:  # not in the OpenAPI description, as in TorchServe's
        app.add_route("/token", TokenResource(check, token_expiration_min))
    app.set_error_serializer(serialize_http_error)
    app.add_error_handler(Exception, _handle_unexpected)
    app.add_error_handler(ServingError, _handle_serving_error)
    return app
