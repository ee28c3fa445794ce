"""KServe's v1 protocol on the inference port, as KServe's TorchServe runtime offered it, so
that an InferenceService that spoke v1 to TorchServe can point at zerobatch:

    GET  /v1/models                    {"models": [names]}
    GET  /v1/models/{model_name}       {"name": m, "ready": true}; 503 not ready, 404 unknown
    POST /v1/models/{model_name}:predict    {"instances": [...]} -> {"predictions": [...]}
    POST /v1/models/{model_name}:explain    {"instances": [...]} -> {"explanations": [...]}

A prediction's instances are sent to the model as separate requests, all at once, so the
broker batches them as any other requests (with the model's batch size and delay), and the
answers come back in the instances' order under "predictions". `{"inputs": [...]}` is taken
as the instances too, and wins over "instances", as KServe's own servers read a v1 body.
An explanation is the same, its instances sent with the request header `explain: True`
(predictions: "False"), as TorchServe marks them, so a BaseHandler subclass runs its
`explain_handle` (worker/base_handler.py); the answers come back under "explanations", as
TorchServe's kserve envelope wraps them. No `url_path` header is sent on either, as TorchServe
sends none on its /v1 routes.

Each instance is one row of the handler's `data`, as TorchServe's KServe envelope handed it:

- a JSON object instance IS the row: `{"data": "iVBOR..."}` reaches the handler as
  `{"data": "iVBOR..."}`, so TorchServe's handlers (`row.get("data") or row.get("body")`)
  read it unchanged. It travels as multipart/form-data, one part per key, each part JSON with
  a filename, which the worker decodes back to the key's JSON value (worker/forms.py);
- any other instance (a list, a number, a string) comes as `{"body": instance}` (a JSON
  request body), which the same handlers read through `row.get("body")`.

Each reply's body is decoded as JSON when its content type is JSON, else as UTF-8 text, else
given as `{"b64": "<base64>"}` (the v1 convention for binary values). If any instance fails,
the whole request is answered with the first failure in instance order, as KServe v1 errors
are: `{"error": "<message>"}` with that failure's status, the message free of server paths.
A request may carry at most the model's max queue (`max_queue`, TorchServe's job_queue_size)
of instances, else 400: more could only be refused by a full queue (see below).

The model list and readiness come from the broker's `models` control call (names, versions,
the default, and whether a live worker serves each; no paths), which it answers to anyone on
its client endpoint, as the Open Inference Protocol's routes ask it too. Ready means at least
one live worker, as TorchServe's v1 model-ready answer counted; a model that is not ready is
answered 503 as KServe's model server answers it (since KServe 0.10), its body
`{"name": m, "ready": false, "error": "Model with name m is not ready."}` holding both
KServe's error and TorchServe's fields. The answer is cached for MODELS_TTL_NS and asked
again for a name it lacks (a model registered since) once it is MODELS_RETRY_NS old, so
the v1 routes cost the broker at most ten calls a second, whatever names a client asks for.
The instance limit is the model's `maxQueue` where that answer gives it, else MAX_INSTANCES.

With token authorization on, a prediction, an explanation and the model list need the
inference key and are refused with TorchServe's InvalidKeyException (as on /predictions,
and as TorchServe refused its own /v1 predictions); GET /v1/models/{m} needs none, like
/ready: probes cannot carry a key that rotates.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import os
import time
from typing import Any

import falcon
import falcon.asgi

from zerobatch.api.http_helpers import (
    REQUEST_ID_HEADER,
    TIMEOUT_HEADER,
    read_body,
    timeout_from_header,
    valid_request_id,
)
from zerobatch.api.token_auth import TokenCheck, refuse_without_inference_key
from zerobatch.config import FrontendConfig
from zerobatch.errors import HandlerError, ModelNotFound, ServingError, client_safe

__all__ = ["add_kserve_v1_routes"]

log = logging.getLogger(__name__)

JSON = "application/json"
#: how old the broker's model list may be when it answers a list, a readiness or a limit
MODELS_TTL_NS = 1_000_000_000
#: how old it must be to be asked again for a name it lacks
MODELS_RETRY_NS = 100_000_000
MODELS_TIMEOUT_MS = 2000
#: the instance limit when the model's max queue is not known (the broker's model list gives
#: no maxQueue, or there is no list)
MAX_INSTANCES = 1000
#: the most keys an object instance may have: the fields one form may hold in the worker
#: (worker/forms.py MAX_FIELDS, which a unit test keeps equal)
MAX_INSTANCE_KEYS = 1000


class V1Error(Exception):
    """A v1 request answered with `{"error": message}` and status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _answer(resp: falcon.asgi.Response, value: Any, status: int = 200) -> None:
    resp.status = status
    resp.content_type = JSON
    resp.data = json.dumps(value, separators=(",", ":")).encode()


def _error(resp: falcon.asgi.Response, status: int, message: str) -> None:
    _answer(resp, {"error": message}, status)


# ------------------------------------------------------------------ the broker's model table

class ModelTable:
    """The default version of each model in the broker's `models` answer, at most
    MODELS_TTL_NS old; one call at a time, however many requests ask."""

    def __init__(self, holder: Any) -> None:
        self._holder = holder
        self._models: dict[str, dict] = {}
        self._failure: ServingError | None = None
        self._at_ns: int | None = None
        self._lock = asyncio.Lock()

    async def models(self, *, max_age_ns: int | None = None) -> dict[str, dict]:
        """name -> the entry of its default version, at most max_age_ns old (default
        MODELS_TTL_NS); the call's ServingError (cached as long as an answer) when the
        broker refused or was silent."""
        at_ns = self._at_ns
        if max_age_ns is None:
            max_age_ns = MODELS_TTL_NS
        if at_ns is None or time.monotonic_ns() - at_ns >= max_age_ns:
            async with self._lock:
                if self._at_ns == at_ns:  # no other request refreshed it meanwhile
                    await self._refresh()
        if self._failure is not None:  # the same error again, without its old traceback
            raise self._failure.with_traceback(None)
        return self._models

    async def _refresh(self) -> None:
        try:
            answer = await self._holder.get().control("models", timeout_ms=MODELS_TIMEOUT_MS)
        except ServingError as exc:
            log.info("v1: the broker did not list its models: %s", exc)
            self._failure, self._models = exc, {}
        else:
            models: dict[str, dict] = {}
            entries = answer.get("models")
            for entry in entries if isinstance(entries, list) else ():
                name = entry.get("modelName") if isinstance(entry, dict) else None
                if isinstance(name, str) and (entry.get("default") or name not in models):
                    models[name] = entry
            self._failure, self._models = None, models
        self._at_ns = time.monotonic_ns()

    async def entry(self, name: str) -> dict:
        """The model's entry, asking the broker again before calling it unknown (it may have
        been registered since); ModelNotFound if it is not there."""
        entry = (await self.models()).get(name)
        if entry is None:
            entry = (await self.models(max_age_ns=MODELS_RETRY_NS)).get(name)
        if entry is None:
            raise ModelNotFound(f"Model with name {name} does not exist.")
        return entry


def is_ready(entry: dict) -> bool:
    """Whether the broker counts a live worker, not retiring, for the model."""
    return entry.get("ready") is True


# ------------------------------------------------------------------ bodies

def instances_of(body: bytes) -> list:
    """The instances of a predict body, or V1Error 400 saying what is wrong."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise V1Error(400, f"Unrecognized request format: the body is not JSON ({exc})") \
            from None
    if not isinstance(payload, dict):
        raise V1Error(400, 'Unrecognized request format: the body must be a JSON object with '
                           f'"instances" (a list), not a JSON {type(payload).__name__}')
    key = "inputs" if "inputs" in payload else "instances"
    if key not in payload:
        raise V1Error(400, 'Unrecognized request format: the body has no "instances" (a list '
                           'of the inputs to predict)')
    instances = payload[key]
    if not isinstance(instances, list):
        raise V1Error(400, f'Expected "{key}" to be a list')
    return instances


def encode_instance(instance: Any, index: int) -> tuple[bytes, str]:
    """(body, content type) of one instance's request: an object as a multipart form of its
    keys (each part the key's JSON value), so the handler's row is the object itself; any
    other value as a JSON body (the row's "body")."""
    if not isinstance(instance, dict) or not instance:
        return json.dumps(instance, separators=(",", ":")).encode(), JSON
    if len(instance) > MAX_INSTANCE_KEYS:
        raise V1Error(400, f"instance {index} has {len(instance)} keys; an instance may have "
                           f"at most {MAX_INSTANCE_KEYS}")
    parts = []
    for key, value in instance.items():
        if not key or "\r" in key or "\n" in key or "\0" in key:
            raise V1Error(400, f"instance {index} has the key {key[:64]!r}: the keys of an "
                               "instance become the handler's row keys, and must be non-empty, "
                               "without line breaks or NUL")
        name = key.replace("\\", "\\\\").replace('"', '\\"').encode()
        content = json.dumps(value, separators=(",", ":")).encode()
        parts.append((name, content))
    boundary = os.urandom(16).hex().encode()
    while any(boundary in content for _, content in parts):  # never, but cheap to be sure
        boundary = os.urandom(16).hex().encode()
    chunks = []
    for name, content in parts:
        chunks += [b"--", boundary, b'\r\nContent-Disposition: form-data; name="', name,
                   b'"; filename="', name, b'"\r\nContent-Type: application/json\r\n\r\n',
                   content, b"\r\n"]
    chunks += [b"--", boundary, b"--\r\n"]
    return b"".join(chunks), f"multipart/form-data; boundary={boundary.decode()}"


def _media_type(content_type: str | None) -> str:
    return (content_type or JSON).partition(";")[0].strip().lower()


def decode_reply(reply: Any) -> Any:
    """One prediction from its reply: JSON when its content type says so, else text, else
    {"b64": ...} for bytes that are not UTF-8."""
    body = bytes(reply.body)
    media = _media_type(reply.content_type)
    if media == JSON or media.endswith("+json"):
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            pass
    try:
        return reply.text if media.startswith("text/") else body.decode("utf-8")
    except (UnicodeDecodeError, LookupError):
        return {"b64": base64.b64encode(body).decode("ascii")}


def reply_error(reply: Any, index: int) -> V1Error:
    """The error of an instance the handler answered with a status >= 400: its JSON
    "message" or "error", else its text."""
    message = None
    value = decode_reply(reply)
    if isinstance(value, dict):
        message = value.get("message") or value.get("error")
    if not isinstance(message, str):
        message = value if isinstance(value, str) else json.dumps(value)
    return V1Error(reply.status, f"instance {index}: {client_safe(message)}")


# ------------------------------------------------------------------ resources

class _Guarded:
    """The token check of the routes that need the inference key."""

    def __init__(self, config: FrontendConfig) -> None:
        self._check = TokenCheck(config.key_file).check if config.key_file else None

    def refused(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> bool:
        return refuse_without_inference_key(self._check, req, resp)


class ModelsResource(_Guarded):
    """GET /v1/models."""

    def __init__(self, config: FrontendConfig, table: ModelTable) -> None:
        super().__init__(config)
        self._table = table

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if self.refused(req, resp):
            return
        try:
            models = await self._table.models()
        except ServingError as exc:
            _error(resp, exc.http_status, client_safe(exc.message))
            return
        _answer(resp, {"models": sorted(models)})


class ModelReadyResource:
    """GET /v1/models/{model_name}."""

    def __init__(self, table: ModelTable) -> None:
        self._table = table

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     model_name: str) -> None:
        if not model_name:
            raise falcon.HTTPRouteNotFound()
        try:
            entry = await self._table.entry(model_name)
        except ServingError as exc:
            _error(resp, exc.http_status, client_safe(exc.message))
            return
        if is_ready(entry):
            _answer(resp, {"name": model_name, "ready": True})
            return
        # KServe's 503 and its error (probes see it), with the fields of the 200 answer
        _answer(resp, {"name": model_name, "ready": False,
                       "error": f"Model with name {model_name} is not ready."}, 503)


class PredictResource(_Guarded):
    """POST /v1/models/{model_name}:predict, or with explain :explain."""

    def __init__(self, holder: Any, config: FrontendConfig, table: ModelTable,
                 explain: bool = False) -> None:
        super().__init__(config)
        #: the `explain` header each instance's request carries, and the answer's key
        self._explain = "True" if explain else "False"
        self._answer_key = "explanations" if explain else "predictions"
        self._holder = holder
        self._table = table
        self._limit = config.max_request_bytes
        self._default_timeout_ms = config.default_timeout_ms
        self._request_ids = map(f"{os.urandom(8).hex()}{{:016x}}".format, itertools.count(1))

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                      model_name: str) -> None:
        if not model_name:
            raise falcon.HTTPRouteNotFound()
        if self.refused(req, resp):  # before the body is read, as on /predictions
            return
        headers = req.headers
        request_id = headers.get(REQUEST_ID_HEADER)
        if request_id is None or not valid_request_id(request_id):
            request_id = next(self._request_ids)
        resp.set_header(REQUEST_ID_HEADER, request_id)
        try:
            timeout = headers.get(TIMEOUT_HEADER)
            timeout_ms = (self._default_timeout_ms if timeout is None
                          else timeout_from_header(timeout, self._default_timeout_ms))
            body = await read_body(req, self._limit)
            instances = instances_of(body)
            await self._check_model(model_name, len(instances))
            predictions = await self._predict(model_name, instances, headers, timeout_ms,
                                              request_id)
        except V1Error as exc:
            _error(resp, exc.status, exc.message)
            return
        except ServingError as exc:
            _error(resp, exc.http_status, client_safe(exc.message))
            return
        _answer(resp, {self._answer_key: predictions})

    async def _check_model(self, name: str, count: int) -> None:
        """ModelNotFound for an unknown model; V1Error 400 past the instance limit."""
        try:
            entry = await self._table.entry(name)
        except ModelNotFound:
            raise
        except ServingError:  # no answer: the broker judges the model itself
            limit = MAX_INSTANCES
            what = "this server's limit"
        else:
            limit = entry.get("maxQueue")  # when the broker's answer gives it
            if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
                what = f"the max queue of model {name} (max_queue, TorchServe's job_queue_size)"
            else:
                limit, what = MAX_INSTANCES, "this server's limit"
        if count > limit:
            raise V1Error(400, f"{count} instances in one request; at most {limit}, {what}, "
                               "may be sent at once: split the request")

    async def _predict(self, model: str, instances: list, headers: dict[str, str],
                       timeout_ms: int, request_id: str) -> list:
        client = self._holder.get()
        forwarded = {name: value for name, value in headers.items()
                     if name != "content-length"}
        forwarded["explain"] = self._explain  # as TorchServe's v1 routes set it
        # every instance encoded (or refused) before any is sent
        requests = [encode_instance(instance, index) for index, instance in enumerate(instances)]
        outcomes = await asyncio.gather(*(
            client.predict(model, body, timeout_ms=timeout_ms, content_type=content_type,
                           headers={**forwarded, "content-type": content_type},
                           request_id=f"{request_id}-{index}")
            for index, (body, content_type) in enumerate(requests)), return_exceptions=True)
        predictions = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, HandlerError):
                raise V1Error(outcome.http_status,
                              f"instance {index}: {client_safe(outcome.message)}")
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome.status >= 400:
                raise reply_error(outcome, index)
            predictions.append(decode_reply(outcome))
        return predictions


def add_kserve_v1_routes(app: Any, holder: Any, config: Any) -> None:
    """Add the /v1 routes (see the module docstring) to the inference app."""
    table = ModelTable(holder)
    app.add_route("/v1/models", ModelsResource(config, table))
    app.add_route("/v1/models/{model_name}", ModelReadyResource(table))
    app.add_route("/v1/models/{model_name}:predict", PredictResource(holder, config, table))
    app.add_route("/v1/models/{model_name}:explain",
                  PredictResource(holder, config, table, explain=True))
