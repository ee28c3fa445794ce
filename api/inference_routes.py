"""TorchServe's inference routes beyond `POST /predictions`: every method of the prediction
paths, a model's own API description (OPTIONS), SageMaker's `/invocations` and
`/models/{model_name}/invoke`, and the legacy `/{model_name}[/{model_version}]/predict`.

TorchServe 0.12's InferenceRequestHandler sends any request to these paths to its
`predict`, whatever its method, so GET, DELETE, PATCH and HEAD predict as POST and PUT do,
with the body the request has (none, usually: the handler gets an empty body); a HEAD's answer
has its Content-Length and no body. OPTIONS is the exception: once the model (and version) is
found, it answers the model's own API description (OpenApiUtils.getModelApi, `model_api`)
without calling the handler; an unknown model or version is the prediction's 404.
So do TRACE, the WebDAV methods and QUERY (AS_POST_METHODS: all falcon routes); CONNECT is a
tunnel, answered 405.

`/invocations` names its model in the query (`?model_name=m`, the first one). Without one
(or with an empty one) it predicts with the only model when exactly one model is registered
(TorchServe: the only model it started with); else a model_name field of a form body names it,
and without one the answer is TorchServe's 400 "Parameter model_name is required.". An empty
model_name with several models is looked up as is (404 "Model not found: ").
`/models/{model_name}/invoke` and `/{model_name}[/{model_version}]/predict` name the model in
the path (an empty name in /invoke is the only model's, as for /invocations). TorchServe reads
the `/models`, `/invocations` and `/ping` paths first, so `/models/m/predict` and
`/invocations/x/predict` are 404 here too (`/ping/predict` is a model named ping here, where
TorchServe answers its health).

On these three routes, unlike /predictions, TorchServe adds the query's parameters to the
request's fields, before the body's: `/invocations?model_name=m` with a JSON body reaches the
handler as {"model_name": b"m", "body": {...}}, and `/m/predict?data=abc` as
{"data": b"abc", "body": b""}. A query value without `=` is an empty one; a name given twice
keeps its last value. `with_fields` carries them to the worker as form fields: prepended to a
url-encoded or multipart form body, else as a multipart form of the fields and the body as a
part named "body" with the request's Content-Type, which the worker decodes as it decodes a
raw body (worker/forms.py). The request's own headers, Content-Type included, reach the
handler unchanged. Nor do these routes set the `url_path` and `explain` headers (TorchServe
sets them on /predictions and /explanations only).

The inference key is asked on all of them, as on /predictions (api/token_auth.py); the
prediction itself, its errors and its metrics are PredictionsResource's (api/http_app.py).
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import falcon
import falcon.asgi
from falcon.uri import parse_query_string

from zerobatch.api.http_helpers import prediction_error_answer
from zerobatch.api.management_helpers import JSON, ts_json
from zerobatch.api.open_inference import model_entries
from zerobatch.api.token_auth import TokenCheck, refuse_without_inference_key
from zerobatch.config import FrontendConfig
from zerobatch.errors import BadRequest, ModelNotFound, ModelVersionNotFound, ServingError

__all__ = ["AS_POST_METHODS", "ExplanationsRoute", "InvocationsResource", "InvokeResource",
           "LegacyPredictResource", "ModelApi", "add_inference_routes", "model_api",
           "answers_every_method_as_post", "with_fields"]

#: how long the broker may take to list its models
MODELS_TIMEOUT_MS = 2000
MODEL_NAME = "model_name"
#: TorchServe's answer to /invocations without a model
MODEL_NAME_REQUIRED = "Parameter model_name is required."
#: the first segments TorchServe routes before the legacy /{model_name}/predict
RESERVED_NAMES = frozenset({"models", "invocations"})
URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"

#: the methods TorchServe predicts on as it does on POST, as far as falcon routes them: all of
#: HTTP's and WebDAV's but OPTIONS (a model's API description) and CONNECT (a tunnel)
AS_POST_METHODS = tuple(method for method in falcon.constants.COMBINED_METHODS
                        if method not in ("POST", "OPTIONS", "CONNECT", "WEBSOCKET"))


def answers_every_method_as_post(cls: type) -> type:
    """cls with its on_post answering each of AS_POST_METHODS too (TorchServe predicts
    whatever the method)."""
    for method in AS_POST_METHODS:
        setattr(cls, "on_" + method.lower(), cls.on_post)
    return cls


#: prepare(req, model name, body, content type) -> (model name, body, content type): what
#: PredictionsResource.send runs once the body is read
Prepare = Callable[[falcon.asgi.Request, str, bytes, str], Awaitable[tuple[str, bytes, str]]]


def model_api(name: str) -> bytes:
    """A model's own API description, as TorchServe answers OPTIONS on its prediction paths
    (OpenApiUtils.getModelApi: three paths, each one POST operation, Gson-pretty JSON)."""
    error = {"type": "object", "required": ["code", "type", "message"],
             "properties": {"code": {"type": "integer", "description": "Error code."},
                            "type": {"type": "string", "description": "Error type."},
                            "message": {"type": "string", "description": "Error message."}}}
    operation = {"post": {
        "description": f"A predict entry point for model: {name}.", "operationId": name,
        "parameters": [],
        "responses": {"200": {"description": "OK"},
                      "500": {"description": "Internal Server Error",
                              "content": {"application/json": {"schema": error}}}}}}
    return ts_json({"openapi": "3.0.1",
                    "info": {"title": f"RESTful API for: {name}", "version": "1.0.0"},
                    "paths": {f"/prediction/{name}": operation,
                              "/v1/models/{model_name}:predict": operation,
                              "/v2/models/{model_name}/infer": operation}})


def query_fields(query_string: str) -> dict[str, list[str]]:
    """The query's parameters as TorchServe's QueryStringDecoder reads them: each name's
    values in order, `+` a space, a value without `=` empty."""
    return {name: value if isinstance(value, list) else [value]
            for name, value in parse_query_string(query_string, keep_blank=True,
                                                  csv=False).items()}


def with_fields(fields: dict[str, list[str]], body: bytes,
                content_type: str) -> tuple[bytes, str]:
    """(body, content type) that reach the worker with `fields` before the body's own (see
    the module docstring); unchanged without fields."""
    pairs = [(name, value) for name, values in fields.items() if name for value in values]
    if not pairs:
        return body, content_type
    if any(char in name for name, _ in pairs for char in "\r\n\0"):
        raise BadRequest("a query parameter's name may not hold a line break or NUL")
    media_type, params = _media_type(content_type)
    if media_type == URLENCODED:
        encoded = urllib.parse.urlencode(pairs).encode()
        return (encoded + b"&" + body if body else encoded), content_type
    boundary = params.get("boundary")
    if media_type == MULTIPART and boundary:
        delimiter = b"--" + boundary.encode("latin-1")
        start = 0 if body.startswith(delimiter) else body.find(b"\r\n" + delimiter) + 2
        start = max(start, 0)  # no delimiter at all: the worker refuses the form anyway
        return body[:start] + _parts(delimiter, pairs) + body[start:], content_type
    new_boundary = os.urandom(16).hex().encode()
    while new_boundary in body:  # never, but cheap to be sure
        new_boundary = os.urandom(16).hex().encode()
    delimiter = b"--" + new_boundary
    own_type = (b"Content-Type: " + content_type.encode("latin-1") + b"\r\n"
                if content_type else b"")
    parts = (_parts(delimiter, pairs) + delimiter
             + b'\r\nContent-Disposition: form-data; name="body"; filename="body"\r\n'
             + own_type + b"\r\n" + body + b"\r\n" + delimiter + b"--\r\n")
    return parts, f"{MULTIPART}; boundary={new_boundary.decode()}"


def _parts(delimiter: bytes, pairs: list[tuple[str, str]]) -> bytes:
    """Plain form-data parts, one a pair (no filename: the worker hands their bytes on)."""
    return b"".join(delimiter + b'\r\nContent-Disposition: form-data; name="'
                    + name.replace("\\", "\\\\").replace('"', '\\"').encode()
                    + b'"\r\n\r\n' + value.encode() + b"\r\n" for name, value in pairs)


def _media_type(content_type: str) -> tuple[str, dict[str, str]]:
    media_type, _, rest = content_type.partition(";")
    params = {}
    for param in rest.split(";"):
        name, _, value = param.partition("=")
        if name.strip():
            params[name.strip().lower()] = value.strip().strip('"')
    return media_type.strip().lower(), params


def form_field(body: bytes, content_type: str, name: str) -> str | None:
    """The first value of the form field `name` of a url-encoded or multipart body, None
    when the body is no form or has no such field (RequestInput.getStringParameter)."""
    media_type, params = _media_type(content_type)
    if media_type == URLENCODED:
        fields = body.decode("utf-8", "replace").split("&")
        for field in fields[:-1] + [fields[-1]] if "=" in fields[-1] else fields[:-1]:
            key, _, value = field.partition("=")
            if urllib.parse.unquote_plus(key) == name:
                return urllib.parse.unquote_plus(value)
        return None
    if media_type != MULTIPART or not params.get("boundary"):
        return None
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    for part in message.iter_parts() if message.is_multipart() else ():
        if part.get_param("name", header="content-disposition") == name:
            payload = part.get_payload(decode=True)
            return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else None
    return None


class ModelApi:
    """OPTIONS on a prediction path: the model's API description once the inference key is
    checked and the model (and version) found; a missing one is the prediction's 404."""

    def __init__(self, holder: Any, config: FrontendConfig) -> None:
        self._holder = holder
        self._check = TokenCheck(config.key_file).check if config.key_file else None
        self._zerobatch_answers = config.zerobatch_answers

    def authorized(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> bool:
        """Whether the request carries the inference key (or none is needed); else the
        response is TorchServe's refusal."""
        return not refuse_without_inference_key(self._check, req, resp)

    async def models(self) -> list:
        """The broker's model entries (BrokerCore.model_list)."""
        answer = await self._holder.get().control("models", timeout_ms=MODELS_TIMEOUT_MS)
        models = answer.get("models")
        return models if isinstance(models, list) else []

    async def only_model(self, models: list | None = None) -> str | None:
        """The model's name when exactly one model is registered, else None."""
        names = {entry.get("modelName") for entry in
                 (await self.models() if models is None else models) if isinstance(entry, dict)}
        return names.pop() if len(names) == 1 else None

    def refuse(self, resp: falcon.asgi.Response, error: ServingError, model_name: str,
               model_version: str | None) -> None:
        status, content_type, body = prediction_error_answer(
            error, model_name, model_version, self._zerobatch_answers)
        resp.status = status
        resp.content_type = content_type
        resp.data = body

    async def answer(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     model_name: str | None, model_version: str | None = None) -> None:
        """Answer OPTIONS for the model (None: /invocations without one, see the module
        docstring; a form body is not read for OPTIONS)."""
        if not self.authorized(req, resp):
            return
        try:
            models = await self.models()
            if not model_name:
                named = await self.only_model(models)
                if named is None and model_name is None:
                    raise BadRequest(MODEL_NAME_REQUIRED)
                model_name = named or ""
            if not model_entries(models, model_name, None):
                raise ModelNotFound(f"Model not found: {model_name}")
            if model_version and not model_entries(models, model_name, model_version):
                raise ModelVersionNotFound(f"Model version: {model_version} does not exist "
                                           f"for model: {model_name}")
        except ServingError as exc:
            self.refuse(resp, exc, model_name or "", model_version)
            return
        resp.content_type = JSON
        resp.data = model_api(model_name)


@answers_every_method_as_post
class ExplanationsRoute:
    """`/explanations/{model_name}[/{model_version}[/{url_path}]]`: a prediction that reaches
    the handler with the request header `explain: True` (on /predictions it is "False",
    whatever the client sent), as TorchServe's front end marks it; everything else (the body,
    the key check, the batching, the answer, the errors, `url_path`) is a prediction's, so the
    request goes to the app's PredictionsResource. A BaseHandler subclass's `handle` then runs
    `explain_handle` instead of inference and postprocess (worker/base_handler.py). Every
    method is an explanation, OPTIONS apart: the model's API description, as on
    /predictions."""

    def __init__(self, predictions: Any, model_api_: ModelApi) -> None:
        #: PredictionsResource.forward(req, resp, model, version, url_path, explain=...)
        self._forward = predictions.forward
        self._model_api = model_api_

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                      model_name: str, model_version: str | None = None,
                      url_path: str = "") -> None:
        await self._forward(req, resp, model_name, model_version, url_path, explain=True)

    async def on_options(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                         model_name: str, model_version: str | None = None,
                         url_path: str = "") -> None:
        await self._model_api.answer(req, resp, model_name, model_version)


class _Route:
    """What the three SageMaker and legacy routes share: the app's PredictionsResource (its
    `send`) and the model API; each answers every method as its on_post, OPTIONS apart."""

    def __init__(self, predictions: Any, model_api_: ModelApi) -> None:
        self._send = predictions.send
        self._model_api = model_api_

    async def _prepare(self, req: falcon.asgi.Request, model_name: str, body: bytes,
                       content_type: str) -> tuple[str, bytes, str]:
        """The path's model (an empty one: the only model's), the query's fields added."""
        if not model_name:
            model_name = await self._model_api.only_model() or ""
        return (_known(model_name),
                *with_fields(query_fields(req.query_string), body, content_type))


@answers_every_method_as_post
class InvocationsResource(_Route):
    """`/invocations`: the model named by the query, the only model, or a form field."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await self._send(req, resp, _query_model(req) or "", None, {}, self._prepare)

    async def _prepare(self, req: falcon.asgi.Request, model_name: str, body: bytes,
                       content_type: str) -> tuple[str, bytes, str]:
        named = _query_model(req)
        if not named:
            named = await self._model_api.only_model() or named
        if named is None:
            named = form_field(body, content_type, MODEL_NAME)
            if named is None:
                raise BadRequest(MODEL_NAME_REQUIRED)
        return _known(named), *with_fields(query_fields(req.query_string), body, content_type)

    async def on_options(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await self._model_api.answer(req, resp, _query_model(req))


@answers_every_method_as_post
class InvokeResource(_Route):
    """`/models/{model_name}/invoke` (an empty name: the only model's)."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                      model_name: str) -> None:
        await self._send(req, resp, model_name, None, {}, self._prepare)

    async def on_options(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                         model_name: str) -> None:
        await self._model_api.answer(req, resp, model_name)


@answers_every_method_as_post
class LegacyPredictResource(_Route):
    """`/{model_name}/predict` and `/{model_name}/{model_version}/predict`."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                      model_name: str, model_version: str | None = None) -> None:
        if model_name in RESERVED_NAMES:
            raise falcon.HTTPRouteNotFound()
        await self._send(req, resp, model_name, model_version, {}, self._prepare)

    async def _prepare(self, req: falcon.asgi.Request, model_name: str, body: bytes,
                       content_type: str) -> tuple[str, bytes, str]:
        """The path's model, even an empty one (TorchServe looks no further here)."""
        return (_known(model_name),
                *with_fields(query_fields(req.query_string), body, content_type))

    async def on_options(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                         model_name: str, model_version: str | None = None) -> None:
        if model_name in RESERVED_NAMES:
            raise falcon.HTTPRouteNotFound()
        await self._model_api.answer(req, resp, model_name, model_version)


def _known(model_name: str) -> str:
    """The model name, or TorchServe's 404 for an empty one (no model is named "")."""
    if not model_name:
        raise ModelNotFound("Model not found: ")
    return model_name


def _query_model(req: falcon.asgi.Request) -> str | None:
    """The query's first model_name, None when it has none."""
    values = query_fields(req.query_string).get(MODEL_NAME)
    return values[0] if values else None


def add_inference_routes(app: Any, predictions: Any, model_api_: ModelApi) -> None:
    """Route /explanations, /invocations, /models/{m}/invoke and the legacy predict paths to
    `predictions`, the app's PredictionsResource, whose own routes the app adds."""
    explanations = ExplanationsRoute(predictions, model_api_)
    app.add_route("/explanations/{model_name}", explanations)
    app.add_route("/explanations/{model_name}/{model_version}", explanations)
    app.add_route("/explanations/{model_name}/{model_version}/{url_path:path}", explanations)
    invocations = InvocationsResource(predictions, model_api_)
    invoke = InvokeResource(predictions, model_api_)
    legacy = LegacyPredictResource(predictions, model_api_)
    app.add_route("/invocations", invocations)
    app.add_route("/models/{model_name}/invoke", invoke)
    app.add_route("/{model_name}/predict", legacy)
    app.add_route("/{model_name}/{model_version}/predict", legacy)
    app.add_sink(_TrailingSlash(invocations, invoke, legacy).answer, TRAILING_SLASH)


#: the three routes with trailing slashes, which TorchServe ignores (Java's String.split drops
#: trailing empty segments); a sink, not routes, so that the routes stay the described ones
TRAILING_SLASH = re.compile(r"/(?:(?P<invocations>invocations)|models/(?P<invoke>[^/]+)/invoke"
                            r"|(?P<legacy>[^/]+)(?:/(?P<version>[^/]+))?/predict)/+$")


class _TrailingSlash:
    """Answers a TRAILING_SLASH path as its route without the slashes."""

    def __init__(self, invocations: InvocationsResource, invoke: InvokeResource,
                 legacy: LegacyPredictResource) -> None:
        self._routes = (invocations, invoke, legacy)

    async def answer(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     invocations: str | None = None, invoke: str | None = None,
                     legacy: str | None = None, version: str | None = None) -> None:
        invocations_, invoke_, legacy_ = self._routes
        if invocations is not None:
            resource, params = invocations_, {}
        elif invoke is not None:
            resource, params = invoke_, {"model_name": invoke}
        else:
            resource, params = legacy_, {"model_name": legacy, "model_version": version}
        responder = getattr(resource, "on_" + req.method.lower(), None)
        if responder is None:
            raise falcon.HTTPMethodNotAllowed(["DELETE", "GET", "HEAD", "OPTIONS", "PATCH",
                                               "POST", "PUT"])
        await responder(req, resp, **params)
