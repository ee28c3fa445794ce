"""The inference app's OpenAPI description (api/openapi/inference.json) against the app itself,
in process (falcon.testing), over a stand-in client.

TorchServe 0.12 answers `OPTIONS /` and every method of `/api-description` on its inference port
with OpenApiUtils.listApis(INFERENCE_CONNECTOR), sent by NettyUtils.sendJsonResponse: 200,
application/json, Gson's pretty printing and a final newline
(http/api/rest/ApiDescriptionRequestHandler.java, first in the inference chain; any other
method of `/` is a MethodNotAllowedException, 405). The description must not drift from the
app: every route the router holds is described, with the methods its resource answers, every
described operation is answered (never 404 or 405), and the statuses the app gives are among
those described for the operation. That holds for the KServe v1 and Open Inference Protocol (v2)
paths (api/kserve_v1.py, api/open_inference.py) too, whose errors are KServe's `{"error": ...}`.
"""

from __future__ import annotations

import json
import re

import falcon.testing
import pytest

from tests.support.openapi import refs
from zerobatch import __version__, token_keys
from zerobatch.api.client_helpers import Reply
from zerobatch.api.http_app import create_app
from zerobatch.api.http_helpers import TIMEOUT_HEADER
from zerobatch.api.inference_routes import AS_POST_METHODS
from zerobatch.api.management_helpers import ts_json
from zerobatch.api.token_auth import AUTHORIZATION_FAILED, INVALID_KEY_BODY
from zerobatch.config import FrontendConfig
from zerobatch.errors import BrokerUnavailable, DeadlineExceeded, ModelNotFound, ServingError

#: name -> versions, the first the default
MODELS = {"echo": ("1.0",)}
#: what a described path's template parameters are replaced with to call it
CONCRETE = {"{model_name}": "echo", "{model_version}": "1.0", "{model}": "echo",
            "{version}": "1.0", "{url_path}": "v1/chat/completion"}
#: the smallest valid v2 infer request (the test app takes bodies of at most 64 bytes)
V2_REQUEST = b'{"inputs":[{"name":"x","datatype":"INT8","shape":[],"data":1}]}'
#: the paths whose errors are KServe's {"error": ...}, not TorchServe's shape
KSERVE_PREFIXES = ("/v1/", "/v2")
#: /api-description (ApiDescriptionRequestHandler) and /ping answer every method, and are
#: described, as TorchServe describes them, by their GET alone
ANY_METHOD_PATHS = {"/api-description", "/ping", "/ping/{subpath}"}
#: the methods a prediction path answers as its POST (TorchServe predicts whatever the
#: method), which its POST's description names instead of one operation each
AS_POST = {method.lower() for method in AS_POST_METHODS} - {"put"}


class FakeClient:
    """The AsyncClient calls the inference app makes: control (ping, ready, models), ping,
    predict and predict_or_stream, answered from MODELS, `loading` naming the models without a
    live worker; `error` makes every call raise it."""

    def __init__(self) -> None:
        self.health = "Healthy"
        self.loading: list[str] = []
        self.error: Exception | None = None

    async def control(self, op: str, *, timeout_ms: int | None = None, **args) -> dict:
        if self.error is not None:
            raise self.error
        if op == "ping":
            return {"status": self.health}
        if op == "ready":
            return {"ready": not self.loading, "loading": list(self.loading)}
        if op == "models":  # BrokerCore.model_list
            return {"models": [
                {"modelName": name, "modelVersion": version, "default": version == versions[0],
                 "ready": name not in self.loading, "maxQueue": 100}
                for name, versions in MODELS.items() for version in versions]}
        raise AssertionError(f"unexpected control call {op!r}")

    async def ping(self, timeout_ms: int = 1000) -> bool:
        try:
            await self.control("ping", timeout_ms=timeout_ms)
        except ServingError:
            return False
        return True

    async def predict_or_stream(self, model: str, body: bytes, *, version: str | None = None,
                                **kwargs) -> Reply:
        if self.error is not None:
            raise self.error
        if model not in MODELS or (version is not None and version not in MODELS[model]):
            raise ModelNotFound(f"Model not found: {model}")
        return Reply(200, "application/json", None, b'{"echo": true}')

    predict = predict_or_stream


@pytest.fixture
def fake() -> FakeClient:
    return FakeClient()


@pytest.fixture
def app(fake):
    return create_app(FrontendConfig(broker_address="tcp://127.0.0.1:9", max_request_bytes=64),
                      client=fake)


def call(app, method: str, path: str, **kwargs) -> falcon.testing.Result:
    return falcon.testing.TestClient(app).simulate_request(method, path, **kwargs)


def served_routes(app) -> dict[str, set[str]]:
    """Each route template of the app's router -> the methods its resource answers itself
    (not falcon's default OPTIONS and 405 responders)."""
    routes: dict[str, set[str]] = {}
    nodes = list(app._router._roots)
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children)
        if node.resource is None:
            continue
        # a field's converter ({url_path:path}) is not part of the OpenAPI template
        routes[re.sub(r"\{(\w+):\w+\}", r"{\1}", node.uri_template)] = {
            method.lower() for method, responder in node.method_map.items()
            if getattr(responder, "__self__", None) is node.resource}
    return routes


def concrete(path: str) -> str:
    for name, value in CONCRETE.items():
        path = path.replace(name, value)
    return path


@pytest.fixture
def document(app) -> dict:
    return call(app, "OPTIONS", "/").json


# ------------------------------------------------------------------ TorchServe's answer

def test_options_root_answers_the_description_as_torchserve_does(app):
    result = call(app, "OPTIONS", "/")
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/json"
    # NettyUtils.sendJsonResponse: Gson's pretty printing, then a newline
    assert result.content == ts_json(result.json)
    assert result.content.startswith(b'{\n  "openapi": "3.0.1",\n  "info": {\n')
    document = result.json
    assert document["info"]["title"] == "TorchServe APIs"  # OpenApiUtils.listApis
    assert document["info"]["version"] == __version__


@pytest.mark.parametrize("method", ["GET", "OPTIONS", "POST", "PUT", "DELETE"])
def test_api_description_answers_every_method_with_the_same_bytes(app, method):
    expected = call(app, "OPTIONS", "/").content
    result = call(app, method, "/api-description")
    assert result.status_code == 200 and result.headers["content-type"] == "application/json"
    assert result.content == expected


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_other_methods_of_root_are_405_in_the_error_shape(app, method):
    result = call(app, method, "/")
    assert result.status_code == 405
    assert result.json["code"] == 405 and set(result.json) == {"code", "type", "message"}


def test_the_inference_description_is_not_the_management_one(document):
    assert "/models" not in document["paths"]
    assert "inference API" in document["info"]["description"]


# ------------------------------------------------------------------ no drift from the app

def test_every_route_is_described_and_every_described_path_is_served(app, document):
    routes = served_routes(app)
    assert set(document["paths"]) == set(routes)
    for path, methods in routes.items():
        described = set(document["paths"][path])
        if path in ANY_METHOD_PATHS:
            assert described <= methods, path
        elif AS_POST <= methods:
            assert described == methods - AS_POST, path
            assert "is answered as POST too" in (
                document["paths"][path]["post"]["description"]), path
        else:
            assert described == methods, path


def test_every_described_operation_is_answered_with_a_described_status(app, document):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            result = call(app, method.upper(), concrete(path), body=b"{}")
            assert result.status_code not in (404, 405), (method, path)
            assert str(result.status_code) in operation["responses"], (method, path)


def test_undescribed_torchserve_paths_are_not_served(app, document):
    # in TorchServe's listing or on its other ports, and not served on zerobatch's inference
    # port: the v2 explain path, the management API's /models and the metrics API's /metrics
    for method, path in (("POST", "/v2/models/echo/explain"),
                         ("POST", "/models"), ("GET", "/models"), ("GET", "/v2/models"),
                         ("GET", "/metrics")):
        assert call(app, method, path).status_code == 404, (method, path)
    assert not {"/v2/models/{model_name}/explain", "/models",
                "/metrics"} & set(document["paths"])


def test_every_reference_resolves(document):
    schemas = document["components"]["schemas"]
    found = refs(document)
    assert found
    for ref in found:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas


def test_the_timeout_header_is_described_on_each_prediction(document):
    for path in ("/predictions/{model_name}", "/predictions/{model_name}/{model_version}"):
        for method in ("post", "put"):
            operation = document["paths"][path][method]
            headers = {param["name"]: param for param in operation["parameters"]
                       if param["in"] == "header"}
            assert headers[TIMEOUT_HEADER]["schema"]["type"] == "integer"
            names = [param["name"] for param in operation["parameters"] if param["in"] == "path"]
            assert ["{" + name + "}" for name in names] == [
                part for part in path.split("/") if part.startswith("{")]


def described_statuses(document: dict, path: str, method: str) -> set[int]:
    return {int(status) for status in document["paths"][path][method]["responses"]}


@pytest.mark.parametrize("method, path, kwargs, status", [
    ("post", "/predictions/{model_name}", {}, 200),
    ("put", "/predictions/{model_name}/{model_version}", {}, 200),
    ("post", "/predictions/{model_name}", {"headers": {TIMEOUT_HEADER: "soon"}}, 400),
    ("post", "/predictions/{model_name}", {"body": b"x" * 65}, 413),
    ("post", "/predictions/{model_name}/{model_version}", {"path": "/predictions/echo/9"}, 404),
    ("post", "/predictions/{model_name}", {"path": "/predictions/nope"}, 404),
])
def test_prediction_statuses_are_described(app, document, method, path, kwargs, status):
    kwargs = dict(kwargs)
    target = kwargs.pop("path", concrete(path))
    result = call(app, method.upper(), target, **kwargs)
    assert result.status_code == status, result.text
    assert status in described_statuses(document, path, method)
    if status >= 400 and status != 413:  # TorchServe's 413 has no body
        assert set(result.json) == {"code", "type", "message"}
        assert result.json["code"] == status


@pytest.mark.parametrize("error", [BrokerUnavailable("the broker is gone"),
                                   DeadlineExceeded("no reply from the broker")])
def test_broker_failures_are_described(app, fake, document, error):
    fake.error = error
    bodies = {"/v1/models/{model_name}:predict": b'{"instances": [1]}',
              "/v2/models/{model}/infer": V2_REQUEST,
              "/v2/models/{model}/versions/{version}/infer": V2_REQUEST}
    asked = [("/predictions/{model_name}", "post"), ("/ping", "get"), ("/ready", "get")]
    no_broker = {"/v2", "/v1/models/{model_name}:explain"}  # answered without asking it
    asked += [(path, method) for path, item in document["paths"].items()
              if path.startswith(KSERVE_PREFIXES) and path not in no_broker for method in item]
    for path, method in asked:
        result = call(app, method.upper(), concrete(path), body=bodies.get(path, b""))
        status = result.status_code
        assert status >= 500 and status in described_statuses(document, path, method), (
            path, status)
        if path.startswith(KSERVE_PREFIXES):
            assert set(result.json) == {"error"}, path


def test_health_and_readiness_statuses_are_described(app, fake, document):
    fake.health = "Unhealthy"
    assert call(app, "GET", "/ping").status_code == 500
    assert 500 in described_statuses(document, "/ping", "get")
    fake.loading = ["echo"]
    result = call(app, "GET", "/ready")
    assert result.status_code == 503 and result.json["loading"] == ["echo"]
    ready = document["paths"]["/ready"]["get"]["responses"]["503"]
    schema_name = ready["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    schema = document["components"]["schemas"][schema_name]
    assert set(result.json) <= set(schema["properties"])
    assert result.json["status"] in schema["properties"]["status"]["enum"]


# ------------------------------------------------------------------ KServe v1 and v2

PREDICT_V1 = "/v1/models/{model_name}:predict"
EXPLAIN_V1 = "/v1/models/{model_name}:explain"
INFER = "/v2/models/{model}/infer"
VERSION_INFER = "/v2/models/{model}/versions/{version}/infer"


@pytest.mark.parametrize("method, path, kwargs, status", [
    ("post", PREDICT_V1, {"body": b'{"instances": [{"data": "a"}, [1]]}'}, 200),
    ("post", PREDICT_V1, {"body": b'{"inputs": [1]}'}, 200),
    ("post", PREDICT_V1, {"body": b'{"instances": 1}'}, 400),
    ("post", PREDICT_V1, {"body": b'{"instances": [1]}', "headers": {TIMEOUT_HEADER: "soon"}},
     400),
    ("post", PREDICT_V1, {"body": b"x" * 65}, 413),
    ("post", PREDICT_V1, {"path": "/v1/models/nope:predict", "body": b'{"instances": [1]}'},
     404),
    ("get", "/v1/models/{model_name}", {"path": "/v1/models/nope"}, 404),
    ("post", EXPLAIN_V1, {"body": b'{"instances": [{"data": "a"}, [1]]}'}, 200),
    ("post", EXPLAIN_V1, {"body": b'{"instances": 1}'}, 400),
    ("post", EXPLAIN_V1, {"path": "/v1/models/nope:explain", "body": b'{"instances": [1]}'},
     404),
    ("post", INFER, {"body": V2_REQUEST}, 200),
    ("post", VERSION_INFER, {"body": V2_REQUEST}, 200),
    ("post", INFER, {"body": V2_REQUEST, "headers": {"Content-Encoding": "gzip"}}, 400),
    ("post", INFER, {"body": V2_REQUEST, "headers": {"Inference-Header-Content-Length": "99"}},
     400),
    ("post", INFER, {"body": V2_REQUEST, "headers": {TIMEOUT_HEADER: "soon"}}, 400),
    ("post", INFER, {"body": b"x" * 65}, 413),
    ("post", INFER, {"path": "/v2/models/nope/infer", "body": V2_REQUEST}, 404),
    ("post", VERSION_INFER, {"path": "/v2/models/echo/versions/9/infer", "body": V2_REQUEST},
     404),
    ("get", "/v2/models/{model}", {"path": "/v2/models/nope"}, 404),
    ("get", "/v2/models/{model}/versions/{version}", {"path": "/v2/models/echo/versions/9"},
     404),
    ("get", "/v2/models/{model}/ready", {"path": "/v2/models/nope/ready"}, 404),
    ("get", "/v2/models/{model}/versions/{version}/ready",
     {"path": "/v2/models/echo/versions/9/ready"}, 404),
])
def test_kserve_statuses_are_described(app, document, method, path, kwargs, status):
    kwargs = dict(kwargs)
    target = kwargs.pop("path", concrete(path))
    result = call(app, method.upper(), target, **kwargs)
    assert result.status_code == status, result.text
    assert status in described_statuses(document, path, method)
    if status >= 400:
        assert set(result.json) == {"error"}
    elif path in (PREDICT_V1, EXPLAIN_V1):
        key = "predictions" if path == PREDICT_V1 else "explanations"
        assert len(result.json[key]) == len(json.loads(kwargs["body"]).popitem()[1])
    else:
        assert result.json["model_name"] == "echo"


def test_kserve_readiness_statuses_are_described(app, fake, document):
    fake.loading = ["echo"]
    result = call(app, "GET", "/v1/models/echo")
    assert result.status_code == 503
    assert 503 in described_statuses(document, "/v1/models/{model_name}", "get")
    schema = document["components"]["schemas"]["V1ModelStatus"]
    assert set(result.json) == set(schema["properties"]) and result.json["ready"] is False
    for path in ("/v2/models/{model}/ready", "/v2/models/{model}/versions/{version}/ready"):
        result = call(app, "GET", concrete(path))
        assert result.status_code == 400 and set(result.json) == {"error"}, path
        assert 400 in described_statuses(document, path, "get")
    assert call(app, "GET", "/v2/health/ready").status_code == 503
    assert 503 in described_statuses(document, "/v2/health/ready", "get")


def header_parameters(operation: dict) -> set[str]:
    return {param["name"] for param in operation["parameters"] if param["in"] == "header"}


def test_the_inference_key_is_described_where_it_is_asked(fake, document, tmp_path):
    """With token authorization on, exactly the operations that describe the Authorization
    header refuse a request without the inference key, with a described 400; with the key,
    none refuses."""
    key_file = str(tmp_path / "key_file.json")
    token_keys.create_key_file(key_file, 60)
    key = token_keys.read_keys(key_file).inference
    app = create_app(FrontendConfig(broker_address="tcp://127.0.0.1:9", max_request_bytes=64,
                                    key_file=key_file), client=fake)

    def refused(result: falcon.testing.Result) -> bool:
        return result.status_code == 400 and (
            result.content == INVALID_KEY_BODY or result.json == {"error": AUTHORIZATION_FAILED})

    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            asks = "Authorization" in header_parameters(operation)
            result = call(app, method.upper(), concrete(path), body=b"{}")
            assert refused(result) == asks, (method, path)
            assert not asks or 400 in described_statuses(document, path, method)
            result = call(app, method.upper(), concrete(path), body=b"{}",
                          headers={"Authorization": f"Bearer {key}"})
            assert not refused(result), (method, path)


def test_the_v2_infer_headers_are_described(document):
    for path in (INFER, VERSION_INFER):
        operation = document["paths"][path]["post"]
        assert {"Inference-Header-Content-Length", TIMEOUT_HEADER, "x-request-id",
                "Authorization"} <= header_parameters(operation)
        assert "Inference-Header-Content-Length" in operation["responses"]["200"]["headers"]


def test_the_description_file_is_gson_pretty_json():
    """The shipped file is written as it is answered (two-space indent, final newline), so a
    reader of the repository sees the bytes the port sends, version aside."""
    import zerobatch.api.management_helpers as helpers

    with open(f"{helpers._OPENAPI_DIR}/inference.json", encoding="utf-8") as handle:
        text = handle.read()
    assert text.encode() == ts_json(json.loads(text))
