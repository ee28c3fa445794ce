"""The HTTP inference app: TorchServe's inference API as a Falcon ASGI app over an AsyncClient.

    OPTIONS /                                    the OpenAPI description (api/openapi/)
    *    /api-description                        the same (TorchServe's deprecated path)
    *    /ping[/...]                             TorchServe's health verdict (BrokerCore.health)
    GET  /ready                                  200 once every model has a live worker, else 503
    POST /predictions/{model_name}               body passed through raw to the model's handler
    POST /predictions/{model_name}/{model_version}
    POST /predictions/{model_name}/{model_version}/{url_path...}
    POST /explanations/...                       the same three, as explanations
    POST /invocations?model_name=...             SageMaker's, and the two below: the query's
    POST /models/{model_name}/invoke             parameters reach the handler as fields
    POST /{model_name}[/{model_version}]/predict (api/inference_routes.py)
    (every other method predicts as POST on all, as TorchServe's do, but CONNECT; OPTIONS
    answers the model's own API description)

As TorchServe's front end does, a prediction carries the request headers `url_path` (the
path after the version, "" without one) and `explain` ("True" on /explanations, else
"False"), set over any the client sent (PredictionsResource.forward,
api/inference_routes.py's ExplanationsRoute).

With token authorization on (config.key_file set), a prediction (OPTIONS too) needs the
inference key, `Authorization: Bearer <key>`, checked before its body is read; without it the
answer is TorchServe's 400 InvalidKeyException. /ping, /ready and the OpenAPI description need
no key (api/token_auth.py says why).

A prediction forwards the raw body, its Content-Type (default application/octet-stream), the
request headers (lowercase names) and its request id: the caller's `x-request-id` header
when it is 1 to 128 visible ASCII characters (api.http_helpers.valid_request_id), else a
fresh one (32 hex digits: a random prefix per process and a counter); the handler reads it
as context.get_request_id(i), and it comes back as the `x-request-id` response header. Its
deadline is the front end's default, or shorter when the caller sends
`x-zerobatch-timeout-ms`. The worker's reply status, headers and body go back as they are
(a Content-Type only when the handler set one, as in TorchServe); a handler that streams
(send_intermediate_predict_response) is answered chunked (Transfer-Encoding: chunked), with
the status and headers of its first chunk, each chunk as it arrives, and the final body last
(an error after the first chunk cuts the response short); it carries TorchServe's
`ts_stream_next: true` header. A failed prediction is answered as TorchServe answers it, or
in zerobatch's own words with config.zerobatch_answers (api.http_helpers.prediction_error_answer).

/ping answers TorchServe's bytes: its StatusResponse as Gson pretty-prints it, then a newline
(`{\n  "status": "Healthy"\n}\n`), 200 for "Healthy" and "Partial Healthy", 500 for
"Unhealthy" and when the broker does not answer within PING_TIMEOUT_MS. /ready is zerobatch's
own, for Kubernetes readiness probes (TorchServe has none): 200 `{"status": "Ready"}` once
every model has a live worker, else 503 `{"status": "Not Ready", "loading": [names]}` (no
"loading" when the broker does not answer); see BrokerCore.readiness for when it goes back to
503.

The AsyncClient is created at lifespan startup, inside the server's event loop, and closed at
shutdown; a client passed to create_app is used as is and left open.

Metrics (api/request_metrics.py): TorchServe's request counters and zerobatch's request
histogram, recorded when prometheus_client's multiprocess directory is set
(PROMETHEUS_MULTIPROC_DIR, which the supervisor sets when the metrics API runs) or when
create_app is given a RequestMetrics. Access log (api/access_log.py): with
config.access_log, one line per request on the logger "zerobatch.access"; off, the app is
not wrapped at all.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
from collections.abc import Awaitable, Callable
from time import monotonic_ns, time_ns
from typing import Any

import falcon
import falcon.asgi

from zerobatch import __version__, logs, tracing
from zerobatch.api.access_log import ACCESS_LOGGER, AccessLog
from zerobatch.api.aio_client import AsyncClient, ReplyStream
from zerobatch.api.http_helpers import (
    REQUEST_ID_HEADER,
    TIMEOUT_HEADER,
    handle_serving_error,
    handle_unexpected,
    http_error_serializer,
    prediction_error_answer,
    read_body,
    timeout_from_header,
    valid_request_id,
)
from zerobatch.api.inference_routes import (
    ModelApi,
    Prepare,
    add_inference_routes,
    answers_every_method_as_post,
)
from zerobatch.api.kserve_v1 import add_kserve_v1_routes
from zerobatch.api.management_app import ApiDescriptionResource
from zerobatch.api.management_helpers import JSON, openapi, ts_json
from zerobatch.api.open_inference import add_open_inference_routes
from zerobatch.api.request_metrics import MetricsMiddleware, RequestMetrics
from zerobatch.api.token_auth import INVALID_KEY_BODY, TokenCheck
from zerobatch.config import FrontendConfig
from zerobatch.errors import HandlerError, ModelNotFound, ServingError
from zerobatch.tracing import SENT_HEADER

__all__ = ["create_app"]

log = logging.getLogger(__name__)

PING_TIMEOUT_MS = 1000
#: prometheus_client's switch for multiprocess mode: set, requests are counted (see above)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OCTET_STREAM = "application/octet-stream"
#: TorchServe's header on a streamed answer (send_intermediate_predict_response)
STREAM_NEXT_HEADER = "ts_stream_next"


def _status_json(fields: dict) -> bytes:
    """JSON as TorchServe sends it: Gson's pretty printing (two-space indent), then '\n'."""
    return json.dumps(fields, indent=2).encode() + b"\n"


_HEALTHY = _status_json({"status": "Healthy"})
_UNHEALTHY = _status_json({"status": "Unhealthy"})
_VERDICTS = {"Partial Healthy": (200, _status_json({"status": "Partial Healthy"})),
             "Unhealthy": (500, _UNHEALTHY)}
_READY = _status_json({"status": "Ready"})
_NOT_READY = _status_json({"status": "Not Ready"})


class _ClientHolder:
    """The app's AsyncClient: made at startup inside the server's loop, or on first use."""

    __slots__ = ("config", "client", "owned")

    def __init__(self, config: FrontendConfig, client: AsyncClient | None) -> None:
        self.config = config
        self.client = client
        self.owned = client is None

    def get(self) -> AsyncClient:
        client = self.client
        if client is None:
            client = self.client = AsyncClient(self.config.broker_address)
        return client

    async def process_startup(self, scope: dict, event: dict) -> None:
        self.get()

    async def process_shutdown(self, scope: dict, event: dict) -> None:
        if self.owned and self.client is not None:
            client, self.client = self.client, None
            await client.aclose()


@answers_every_method_as_post
class PingResource:
    """/ping, and every path below it, whatever the method (a load balancer may probe with
    HEAD), as TorchServe answers its health."""

    def __init__(self, holder: _ClientHolder) -> None:
        self._holder = holder

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     subpath: str = "") -> None:
        resp.content_type = "application/json"
        try:
            answer = await self._holder.get().control("ping", timeout_ms=PING_TIMEOUT_MS)
        except ServingError as exc:
            log.info("ping: broker unhealthy or silent: %s", exc)
            resp.status = 500
            resp.data = _UNHEALTHY
            return
        status = answer.get("status")  # the broker's own verdict, in TorchServe's words
        verdict = _VERDICTS.get(status) if isinstance(status, str) else None
        if verdict is not None:
            resp.status, resp.data = verdict
            return
        resp.data = _HEALTHY

    on_post = on_options = on_get


class ReadyResource:
    def __init__(self, holder: _ClientHolder) -> None:
        self._holder = holder

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = "application/json"
        try:
            answer = await self._holder.get().control("ready", timeout_ms=PING_TIMEOUT_MS)
        except ServingError as exc:
            log.info("ready: broker silent or refusing: %s", exc)
            resp.status = 503
            resp.data = _NOT_READY
            return
        if answer.get("ready") is True:
            resp.data = _READY
            return
        loading = answer.get("loading")
        names = [name for name in loading if isinstance(name, str)] \
            if isinstance(loading, list) else []
        resp.status = 503
        resp.data = _status_json({"status": "Not Ready", "loading": names})


@answers_every_method_as_post  # as TorchServe (OPTIONS apart: on_options)
class PredictionsResource:
    def __init__(self, holder: _ClientHolder, config: FrontendConfig,
                 metrics: RequestMetrics | None = None) -> None:
        # 32 hex digits like a uuid4: a random prefix per process and a counter, without a
        # syscall per request.
        self._request_ids = map(f"{os.urandom(8).hex()}{{:016x}}".format, itertools.count(1))
        self._holder = holder
        #: the inference key's check, None when token authorization is off
        self._check = TokenCheck(config.key_file).check if config.key_file else None
        self._limit = config.max_request_bytes
        self._default_timeout_ms = config.default_timeout_ms
        #: zerobatch's own error answers instead of TorchServe's (--zerobatch-answers)
        self._zerobatch_answers = config.zerobatch_answers
        self._metrics = metrics
        #: OPTIONS: the model's own API description (api/inference_routes.py)
        self.model_api = ModelApi(holder, config)
        #: traced(predict, req, resp, model, version): predict inside the request's span when
        #: tracing is on (api.request_tracing, only imported then), else None
        self._traced: Callable[..., Awaitable[None]] | None = None
        tracer = tracing.tracer("frontend")
        if tracer is not None:
            from zerobatch.api.request_tracing import traced
            self._traced = functools.partial(traced, tracer)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                      model_name: str, model_version: str | None = None,
                      url_path: str = "") -> None:
        await self.forward(req, resp, model_name, model_version, url_path, explain=False)

    async def on_options(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                         model_name: str, model_version: str | None = None,
                         url_path: str = "") -> None:
        await self.model_api.answer(req, resp, model_name, model_version)

    async def send(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                   model_name: str, model_version: str | None, added: dict[str, str],
                   prepare: Prepare | None = None) -> None:
        """Send a prediction with `added` over the request's headers; with `prepare`, once it,
        given the body, has named the model and made the body the worker gets (/invocations
        and the other routes of api/inference_routes.py)."""
        predict = (self._predict if prepare is None
                   else functools.partial(self._predict, prepare=prepare))
        if self._traced is None:
            await predict(req, resp, model_name, model_version, {**req.headers, **added})
        else:
            await self._traced(functools.partial(_predict_adding, predict, added),
                               req, resp, model_name, model_version)

    async def forward(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                      model_name: str, model_version: str | None, url_path: str,
                      explain: bool) -> None:
        """Send a prediction (or, explain, an explanation: ExplanationsRoute) with the two
        headers TorchServe's front end sets on both, over any the client sent: `url_path`,
        the path after the version without its leading slash or trailing slashes ("" when
        there is none), and `explain` ("True" or "False"), which BaseHandler.handle reads."""
        await self.send(req, resp, model_name, model_version,
                        {"url_path": url_path.rstrip("/"),
                         "explain": "True" if explain else "False"})

    async def _predict(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                       model_name: str, model_version: str | None,
                       forwarded: dict[str, str], prepare: Prepare | None = None) -> None:
        """Answer one prediction; forwarded: the headers the worker gets (a copy of the
        request's with url_path and explain; traced, it carries the front end's span too);
        prepare: see send."""
        start_ns = monotonic_ns()
        if not model_name and prepare is None:  # /predictions/%2F: no model is named ""
            raise falcon.HTTPRouteNotFound()
        headers = req.headers
        check = self._check  # before the body is read: nothing of a refused one is buffered
        if check is not None and not check("inference", headers.get("authorization")):
            resp.status = 400
            resp.content_type = JSON
            resp.data = INVALID_KEY_BODY
            return
        request_id = headers.get(REQUEST_ID_HEADER)
        if request_id is None or not valid_request_id(request_id):
            request_id = next(self._request_ids)
        resp.set_header(REQUEST_ID_HEADER, request_id)
        timeout = headers.get(TIMEOUT_HEADER)
        try:
            timeout_ms = (self._default_timeout_ms if timeout is None
                          else timeout_from_header(timeout, self._default_timeout_ms))
            body = await read_body(req, self._limit)
            content_type = headers.get("content-type") or OCTET_STREAM
            if prepare is not None:
                model_name, body, content_type = await prepare(req, model_name, body,
                                                               content_type)
        except ServingError as exc:
            self._refuse(req, resp, exc, model_name, model_version)
            return
        if self._traced is not None:  # traced: the queue's span starts at the send
            forwarded[SENT_HEADER] = str(time_ns())
        metrics = self._metrics
        try:
            reply = await self._holder.get().predict_or_stream(
                model_name, body, version=model_version, timeout_ms=timeout_ms,
                content_type=content_type, headers=forwarded,
                request_id=request_id)
        except ServingError as exc:
            if metrics is not None and not isinstance(exc, ModelNotFound):
                metrics.record(model_name, model_version, start_ns,
                               answered=isinstance(exc, HandlerError))
            self._refuse(req, resp, exc, model_name, model_version)
            return
        resp.status = reply.status
        if reply.headers:  # the handler's, its content-type too; without one, TorchServe
            # sends no Content-Type (nor does this app: default_media_type is None)
            resp.set_headers(reply.headers)
        if type(reply) is ReplyStream:  # chunked: each chunk as it comes, the final body last
            # TorchServe's backend marks a streamed answer's parts so, and its front end sends
            # the first part's headers
            resp.set_header(STREAM_NEXT_HEADER, "true")
            chunks = reply.chunks()
            resp.stream = chunks if metrics is None else metrics.stream(
                chunks, model_name, model_version, start_ns)
        else:
            resp.data = reply.body
            if metrics is not None:
                metrics.record(model_name, model_version, start_ns)


    def _refuse(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                error: ServingError, model_name: str, model_version: str | None) -> None:
        """Answer a prediction that failed (api.http_helpers.prediction_error_answer)."""
        status, content_type, body = prediction_error_answer(
            error, model_name, model_version, self._zerobatch_answers)
        if error.http_status >= 500:
            log.debug("%s %s -> %d %s: %s", req.method, req.path, status, error.code,
                      error.message)
        resp.status = status
        resp.content_type = content_type
        resp.data = body


async def _predict_adding(predict: Callable[..., Awaitable[None]], added: dict[str, str],
                          req: falcon.asgi.Request, resp: falcon.asgi.Response,
                          model_name: str, model_version: str | None,
                          forwarded: dict[str, str]) -> None:
    """predict with `added` over the traced copy of the request's headers."""
    forwarded.update(added)
    await predict(req, resp, model_name, model_version, forwarded)


def create_app(config: FrontendConfig, client: AsyncClient | None = None,
               metrics: RequestMetrics | None = None) -> Any:
    """The inference app for one front-end process (see the module docstring): a falcon
    app, wrapped in the access log when config.access_log. metrics: where requests are
    counted; by default a RequestMetrics when prometheus_client's multiprocess directory is
    set, else none."""
    holder = _ClientHolder(config, client)
    if metrics is None and os.environ.get(MULTIPROC_ENV):
        metrics = RequestMetrics()
    middleware: list = [holder]
    if metrics is not None:
        middleware.append(MetricsMiddleware(metrics))
    app = falcon.asgi.App(middleware=middleware)
    # ApiDescriptionRequestHandler, first in TorchServe's inference chain: OPTIONS / (any
    # other method of /: 405) and every method of /api-description, Gson-pretty JSON
    document = ts_json(openapi(__version__, "inference"))
    app.add_route("/", ApiDescriptionResource(document, any_method=False))
    app.add_route("/api-description", ApiDescriptionResource(document, any_method=True))
    ping = PingResource(holder)
    app.add_route("/ping", ping)
    app.add_route("/ping/{subpath:path}", ping)  # TorchServe reads no further than /ping
    app.add_route("/ready", ReadyResource(holder))
    predictions = PredictionsResource(holder, config, metrics)
    app.add_route("/predictions/{model_name}", predictions)
    app.add_route("/predictions/{model_name}/{model_version}", predictions)
    # TorchServe's url_path: whatever follows the version, handed on as a header
    app.add_route("/predictions/{model_name}/{model_version}/{url_path:path}", predictions)
    # /explanations, /invocations, /models/{m}/invoke, /{m}[/{v}]/predict
    add_inference_routes(app, predictions, predictions.model_api)
    add_open_inference_routes(app, holder, config, metrics)  # KServe v2 (open_inference.py)
    add_kserve_v1_routes(app, holder, config)  # KServe v1 (api/kserve_v1.py)
    app.set_error_serializer(http_error_serializer)
    # each answer names its content type, or has none (TorchServe's 413): no default added
    app.resp_options.default_media_type = None
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(ServingError, handle_serving_error)
    if not config.access_log:
        return app
    return AccessLog(app, lines=logs.buffered_lines(ACCESS_LOGGER))
