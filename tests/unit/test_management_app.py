"""The management app (api/management_app.py) against TorchServe 0.12's management API, in
process (falcon.testing), over a real BrokerCore played as the broker's control socket.

Each call goes through BrokerCore.on_control and is decoded as the client decodes it, so the
describe answers have exactly broker/core.py's shape and its errors their wire types; a fake
supervisor starts or retires workers after a `scale` call, as broker/supervisor.py would.
Expected shapes, messages and statuses are TorchServe's; the Java sources quoted are under
frontend/server/src/main/java/org/pytorch/serve/ in pytorch/serve at v0.12.0.
"""

from __future__ import annotations

import json
import os
import re

import falcon.testing
import pytest

from tests.support.broker_core import CLIENT, add, make_core, request, take_control
from tests.support.openapi import refs
from zerobatch import protocol as p
from zerobatch.api.client_helpers import decode_control
from zerobatch.api.management_app import create_management_app
from zerobatch.api.management_helpers import java_int, list_page, ts_json
from zerobatch.config import ManagementConfig
from zerobatch.errors import BrokerUnavailable

#: DescribeModelResponse's fields in their declared order (Gson writes them so), those this
#: app shows; the required ones first
TS_DESCRIBE_ORDER = ["modelName", "modelVersion", "modelUrl", "runtime", "minWorkers",
                     "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout",
                     "startupTimeout", "deviceType", "deviceIds", "loadedAtStartup", "workers",
                     "jobQueueStatus"]
TS_DESCRIBE_REQUIRED = {"modelName", "modelVersion", "runtime", "minWorkers", "maxWorkers",
                        "batchSize", "maxBatchDelay", "loadedAtStartup", "workers",
                        "jobQueueStatus"}
#: DescribeModelResponse.Worker, in order
TS_WORKER_KEYS = ["id", "startTime", "status", "memoryUsage", "pid", "gpu", "gpuUsage"]
#: util/JsonUtils: setDateFormat("yyyy-MM-dd'T'HH:mm:ss.SSS'Z'")
GSON_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
#: http/ResourceNotFoundException and MethodNotAllowedException
NOT_FOUND = "Requested resource is not found, please refer to API document."
NOT_ALLOWED = "Requested method is not allowed, please refer to API document."


class CoreControl:
    """`control(op, **args)` answered by a BrokerCore's control socket, with a supervisor that
    starts (or fails to load) and retires workers `start_after` control calls after a scale."""

    def __init__(self, core, *, start_after: int = 0, fail_load: bool = False) -> None:
        self.core = core
        self.start_after = start_after
        self.fail_load = fail_load
        self.calls: list[tuple[str, dict]] = []
        self.error: Exception | None = None
        self._countdown = 0
        self._next_worker = 0

    async def control(self, op: str, timeout_ms: int | None = None, **args) -> dict:
        self.calls.append((op, args))
        if self.error is not None:
            raise self.error
        self._supervise()
        self.core.on_control([CLIENT] + p.encode_control(b"r", op, **args), 0)
        [message] = take_control(self.core)
        [(command, _rid, meta, body)] = p.parse_client_replies(message[1:])
        answer = decode_control(command, meta, body)
        if op == "scale":
            self._countdown = self.start_after
        return answer

    def scales(self) -> list[dict]:
        return [args for op, args in self.calls if op == "scale"]

    def start(self, name: str, version: str, count: int) -> None:
        for _ in range(count):
            self._next_worker += 1
            worker_id = f"{name}@{version}#{self._next_worker}.1"
            if self.fail_load:
                frames = p.encode_load_failed(name, version, worker_id,
                                              "ImportError: no module in /srv/models/x.py")
            else:
                frames = p.encode_ready(name, version, worker_id, None, os.getpid())
            self.core.on_back([worker_id.encode()] + frames, 0)

    def _supervise(self) -> None:
        if self._countdown > 0:
            self._countdown -= 1
            return
        requests, self.core.scale_requests = self.core.scale_requests, []
        for model, count in requests:
            name, version = model.name, model.version
            if version not in self.core.models.get(name, {}):  # unregistered: nothing runs
                continue
            live = list(self.core.find_model(name, version).workers.values())
            self.start(name, version, count - len(live))
            for worker in live[count:]:  # retired, then gone (it says DISCONNECT)
                self.core.retire(worker.worker_id)
                self.core.on_back([worker.identity, p.VERSION, p.W_DISCONNECT], 0)


@pytest.fixture
def core():
    core = make_core("python")
    add(core, name="echo", version="1.0")
    add(core, name="echo", version="2.0")
    add(core, name="alpha", version="1.0")
    return core


@pytest.fixture
def control(core):
    control = CoreControl(core)
    control.start("echo", "1.0", 1)
    return control


def client(control) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_management_app(control, poll_s=0.001))


def call(control, method: str, path: str, query: str = "") -> falcon.testing.Result:
    return client(control).simulate_request(method, path, query_string=query)


def assert_error(result, status: int, type_name: str, message: str) -> None:
    """ErrorResponse as NettyUtils.sendError writes it: Gson pretty JSON, then a newline."""
    assert result.status_code == status, result.text
    assert result.headers["content-type"] == "application/json"
    assert result.content == (b'{\n  "code": %d,\n  "type": "%s",\n  "message": %s\n}\n'
                              % (status, type_name.encode(), json.dumps(message).encode()))


def assert_status(result, status: int, message: str) -> None:
    """StatusResponse as GSON_PRETTY_EXPOSED writes it: only "status"."""
    assert result.status_code == status, result.text
    assert result.content == b'{\n  "status": %s\n}\n' % json.dumps(message).encode()


# ------------------------------------------------------------------ GET /models

def test_list_has_each_models_default_version_sorted_by_name(control):
    result = call(control, "GET", "/models")
    assert result.status_code == 200
    assert result.content.endswith(b"}\n") and result.content == ts_json(result.json)
    # ListModelsResponse {nextPageToken?, models: [{modelName, modelUrl}]}; modelUrl is left
    # out (as Gson leaves a null) until the broker's describe reports it
    assert [m["modelName"] for m in result.json["models"]] == ["alpha", "echo"]
    assert all(set(m) <= {"modelName", "modelUrl"} for m in result.json["models"])
    assert "nextPageToken" not in result.json
    assert call(control, "GET", "/models/").json == result.json  # TorchServe splits on "/"


@pytest.mark.parametrize("query, names, token", [
    ("limit=1", ["alpha"], "1"),
    ("limit=1&next_page_token=1", ["echo"], "2"),  # ends at the last model: a token still
    ("limit=2&next_page_token=2", [], None),
    ("limit=0", [], "0"),
    ("limit=abc", ["alpha", "echo"], None),        # getIntParameter: not a number = default
    ("limit=101", ["alpha", "echo"], None),        # getModelList: > 100 or < 0 is 100
    ("limit=-1", ["alpha", "echo"], None),
    ("next_page_token=-3", ["alpha", "echo"], None),
    ("next_page_token=x", ["alpha", "echo"], None),
    ("next_page_token=9", [], None),
])
def test_list_pages_as_torchserve(control, query, names, token):
    result = call(control, "GET", "/models", query)
    assert result.status_code == 200
    assert [m["modelName"] for m in result.json["models"]] == names
    assert result.json.get("nextPageToken") == token
    if token is not None:  # ListModelsResponse declares nextPageToken first
        assert list(result.json) == ["nextPageToken", "models"]


def test_list_page_over_more_models_than_a_page():
    models = [(f"m{i:03d}", f"m{i:03d}.mar") for i in range(250)]
    first = list_page(models, 100, 0)
    assert first["nextPageToken"] == "100" and len(first["models"]) == 100
    assert first["models"][0] == {"modelName": "m000", "modelUrl": "m000.mar"}
    last = list_page(models, 100, 200)
    assert "nextPageToken" not in last and len(last["models"]) == 50


# ------------------------------------------------------------------ describe

def assert_torchserve_describe(entry: dict) -> None:
    keys = [key for key in entry if key != "zerobatch"]
    assert keys == [key for key in TS_DESCRIBE_ORDER if key in entry]
    assert TS_DESCRIBE_REQUIRED <= set(entry)
    assert list(entry)[-1] == "zerobatch"
    for worker in entry["workers"]:
        assert list(worker) == TS_WORKER_KEYS
        assert GSON_DATE.match(worker["startTime"])
        assert worker["status"] in ("READY", "UNLOADING")
        assert worker["gpu"] is False and worker["gpuUsage"] == "N/A"
    assert "pendingRequests" in entry["jobQueueStatus"]


def test_describe_default_version_in_torchserve_shape_with_live_figures(control):
    result = call(control, "GET", "/models/echo")
    assert result.status_code == 200 and result.content == ts_json(result.json)
    [entry] = result.json
    assert_torchserve_describe(entry)
    assert (entry["modelName"], entry["modelVersion"]) == ("echo", "1.0")
    assert (entry["batchSize"], entry["maxBatchDelay"], entry["runtime"]) == (4, 50, "python")
    assert entry["minWorkers"] == 1 and entry["loadedAtStartup"] is True
    [worker] = entry["workers"]
    assert worker["pid"] == os.getpid() and worker["status"] == "READY"
    assert worker["memoryUsage"] > 1_000_000  # this process's resident bytes, from /proc
    own = entry["zerobatch"]
    for key in ("queued", "requests", "refusedLate", "refusedQueueFull", "batchSizes",
                "loadError", "workerStatus"):
        assert key in own
    assert own["workerStatus"] == {worker["id"]: "READY"}


def test_describe_counts_waiting_requests(core, control):
    for rid in (b"a", b"b", b"c"):
        request(core, rid, 0, model="alpha")  # alpha has no worker: they wait
    [entry] = call(control, "GET", "/models/alpha").json
    assert entry["jobQueueStatus"]["pendingRequests"] == 3
    assert entry["zerobatch"]["queued"] == 3 and entry["zerobatch"]["requests"] == 3
    if "remainingCapacity" in entry["jobQueueStatus"]:  # once describe reports maxQueue
        assert entry["jobQueueStatus"]["remainingCapacity"] == 8 - 3


def test_describe_a_version_and_all_versions(control):
    [entry] = call(control, "GET", "/models/echo/2.0").json
    assert entry["modelVersion"] == "2.0" and entry["workers"] == []
    entries = call(control, "GET", "/models/echo/all").json
    assert [e["modelVersion"] for e in entries] == ["1.0", "2.0"]
    for entry in entries:
        assert_torchserve_describe(entry)


@pytest.mark.parametrize("path, type_name, message", [
    # ApiUtils.getModelDescription: "Model not found: " + modelName
    ("/models/nope", "ModelNotFoundException", "Model not found: nope"),
    ("/models/nope/1.0", "ModelNotFoundException", "Model not found: nope"),
    ("/models/nope/all", "ModelNotFoundException", "Model not found: nope"),
    # ModelManager.getModel: "Model version: " + versionId + " does not exist for model: " ...
    ("/models/echo/9.9", "ModelVersionNotFoundException",
     "Model version: 9.9 does not exist for model: echo"),
])
def test_describe_unknown_model_or_version_is_404(control, path, type_name, message):
    assert_error(call(control, "GET", path), 404, type_name, message)


def test_customized_describe_is_not_implemented(control):
    result = call(control, "GET", "/models/echo", "customized=true")
    assert result.status_code == 501 and result.json["type"] == "NotImplementedException"
    assert "customized" in result.json["message"]
    assert call(control, "GET", "/models/echo/all", "customized=true").status_code == 200


# ------------------------------------------------------------------ scale

def test_scale_answers_202_at_once_and_asks_the_broker(control):
    # ApiUtils.updateModelWorkers: new StatusResponse("Processing worker updates...", 202)
    assert_status(call(control, "PUT", "/models/echo", "min_worker=3"), 202,
                  "Processing worker updates...")
    assert control.scales() == [{"model": "echo", "workers": 3, "max_workers": 3}]
    call(control, "PUT", "/models/echo/2.0", "min_worker=2&max_worker=4")
    call(control, "PUT", "/models/echo", "model_version=2.0")  # min_worker defaults to 1
    assert control.scales()[1:] == [
        {"model": "echo", "version": "2.0", "workers": 2, "max_workers": 4},
        {"model": "echo", "version": "2.0", "workers": 1, "max_workers": 1}]


def test_synchronous_scale_up_waits_for_the_workers(core):
    control = CoreControl(core, start_after=3)  # the workers come 3 describe calls later
    control.start("echo", "1.0", 1)
    result = call(control, "PUT", "/models/echo", "min_worker=3&synchronous=true")
    assert_status(result, 200, "Workers scaled to 3 for model: echo")
    assert len(core.find_model("echo", None).workers) == 3
    assert [op for op, _ in control.calls].count("describe") >= 4
    [entry] = call(control, "GET", "/models/echo").json
    assert len(entry["workers"]) == 3 and entry["minWorkers"] == 3


def test_synchronous_scale_of_a_version_and_down(control, core):
    result = call(control, "PUT", "/models/echo/2.0", "min_worker=2&synchronous=TRUE")
    assert_status(result, 200, "Workers scaled to 2 for model: echo, version: 2.0")
    result = call(control, "PUT", "/models/echo/2.0", "min_worker=0&synchronous=true")
    assert_status(result, 200, "Workers scaled to 0 for model: echo, version: 2.0")
    assert not core.find_model("echo", "2.0").workers


def test_synchronous_scale_past_its_timeout_answers_in_progress(core):
    control = CoreControl(core, start_after=10**6)  # never within the call
    result = call(control, "PUT", "/models/echo", "min_worker=2&synchronous=true&timeout=0")
    # updateModelWorkers: "Workers scaling in progress...", HTTP_PARTIAL (210)
    assert_status(result, 210, "Workers scaling in progress...")


def test_synchronous_scale_whose_worker_fails_to_load_is_500(core):
    control = CoreControl(core, fail_load=True)
    result = call(control, "PUT", "/models/echo", "min_worker=1&synchronous=true&timeout=30")
    # updateModelWorkers: "Failed to start workers for model " + modelName + " version: " +
    # modelVersion (Java writes a null version as "null"), sent as InternalServerException
    assert_error(result, 500, "InternalServerException",
                 "Failed to start workers for model echo version: null")


@pytest.mark.parametrize("query, message", [
    # ApiUtils.updateModelWorkers
    ("min_worker=3&max_worker=2", "max_worker cannot be less than min_worker."),
    ("max_worker=0", "max_worker cannot be less than min_worker."),
    # zerobatch refuses what TorchServe reads as the default (min_worker=abc is 1 worker)
    ("min_worker=abc", "Parameter min_worker must be an integer, got 'abc'."),
    ("min_worker=2.0", "Parameter min_worker must be an integer, got '2.0'."),
    ("min_worker=%202", "Parameter min_worker must be an integer, got ' 2'."),
    ("min_worker=1&max_worker=x", "Parameter max_worker must be an integer, got 'x'."),
    ("min_worker=1&timeout=soon", "Parameter timeout must be an integer, got 'soon'."),
    ("min_worker=-1", "min_worker cannot be negative, got -1."),
])
def test_bad_scale_parameters_are_400_and_scale_nothing(control, query, message):
    assert_error(call(control, "PUT", "/models/echo", query), 400, "BadRequestException",
                 message)
    assert control.scales() == []


def test_scale_beyond_the_brokers_limit_is_its_400(control):
    result = call(control, "PUT", "/models/echo", "min_worker=1000")
    assert result.status_code == 400 and result.json["type"] == "BadRequestException"
    assert "1000" in result.json["message"]


@pytest.mark.parametrize("path, query, type_name, message", [
    ("/models/nope", "min_worker=1", "ModelNotFoundException", "Model not found: nope"),
    ("/models/echo/9.9", "min_worker=1", "ModelVersionNotFoundException",
     "Model version: 9.9 does not exist for model: echo"),
    ("/models/echo/all", "min_worker=1", "ModelVersionNotFoundException",
     "Model version: all does not exist for model: echo"),
    ("/models/echo", "model_version=7", "ModelVersionNotFoundException",
     "Model version: 7 does not exist for model: echo"),
])
def test_scale_of_an_unknown_model_or_version_is_404(control, path, query, type_name,
                                                       message):
    assert_error(call(control, "PUT", path, query), 404, type_name, message)
    assert control.scales() == []


# ------------------------------------------------------------------ not possible yet

def client_with_model_api(control, store: str) -> falcon.testing.TestClient:
    settings = ManagementConfig(control_address="ipc:///nowhere", run_dir=store,
                                model_store=store, enable_model_api=True,
                                allowed_urls=(r"https://models\.example/.*",))
    return falcon.testing.TestClient(create_management_app(control, poll_s=0.001,
                                                           settings=settings))


@pytest.mark.parametrize("method, path", [("POST", "/models"), ("DELETE", "/models/echo/2.0"),
                                          ("DELETE", "/models/alpha")])
def test_register_and_unregister_are_405_unless_the_model_api_is_enabled(control, method,
                                                                         path):
    # ManagementRequestHandler: POST and DELETE only when configManager.isModelApiEnabled()
    assert_error(call(control, method, path, "url=squeezenet.mar"), 405,
                 "MethodNotAllowedException", NOT_ALLOWED)
    assert [op for op, _args in control.calls if op != "describe"] == []


@pytest.mark.parametrize("query, status, type_name, message", [
    ("", 400, "BadRequestException", "Parameter url is required."),
    ("url=", 404, "ModelNotFoundException", "empty url"),
    ("url=../secret.mar", 404, "ModelNotFoundException",
     "Relative path is not allowed in url: ../secret.mar"),
    ("url=a/..%2F..%2Fb.mar", 404, "ModelNotFoundException",
     "Relative path is not allowed in url: a/../../b.mar"),
    ("url=http://elsewhere/m.mar", 404, "ModelNotFoundException",
     "Given URL http://elsewhere/m.mar does not match any allowed URL(s)"),
    ("url=file:///etc/passwd", 404, "ModelNotFoundException",
     "Given URL file:///etc/passwd does not match any allowed URL(s)"),
    ("url=missing.mar", 404, "ModelNotFoundException", "Model not found at: missing.mar"),
    ("url=/missing.mar", 404, "ModelNotFoundException", "Model not found at: /missing.mar"),
    ("url=m.mar&batch_size=two", 400, "BadRequestException",
     "Parameter batch_size must be an integer, got 'two'."),
    ("url=m.mar&initial_workers=1x", 400, "BadRequestException",
     "Parameter initial_workers must be an integer, got '1x'."),
])
def test_register_refuses_bad_input_as_torchserve(control, tmp_path, query, status,
                                                  type_name, message):
    result = client_with_model_api(control, str(tmp_path)).simulate_post(
        "/models", query_string=query)
    assert_error(result, status, type_name, message)
    assert [op for op, _args in control.calls if op == "register"] == []


def test_register_reads_a_json_body_and_refuses_a_bad_or_oversized_one(control, tmp_path):
    app = client_with_model_api(control, str(tmp_path))
    result = app.simulate_post("/models", json={"url": "../x.mar", "initial_workers": 1})
    assert_error(result, 404, "ModelNotFoundException",
                 "Relative path is not allowed in url: ../x.mar")
    result = app.simulate_post("/models", body=b"{not json",
                               headers={"content-type": "application/json"})
    assert_error(result, 400, "BadRequestException", "The request body is not valid JSON.")
    result = app.simulate_post("/models", json={"url": "m.mar", "batch_size": "x" * 70_000})
    assert result.status_code == 413, result.text
    assert result.json["code"] == 413 and "at most 65536 bytes" in result.json["message"]


def test_unregister_refuses_what_torchserve_refuses_then_unregisters(control, tmp_path):
    app = client_with_model_api(control, str(tmp_path))
    assert_error(app.simulate_delete("/models/nope"), 404, "ModelNotFoundException",
                 "Model not found: nope")
    assert_error(app.simulate_delete("/models/echo/9.9"), 404,
                 "ModelVersionNotFoundException",
                 "Model version: 9.9 does not exist for model: echo")
    # ApiUtils.unregisterModel: the default version of a model with others is refused with
    # InvalidModelVersionException, an IllegalArgumentException: HttpRequestHandler's 403
    for path in ("/models/echo", "/models/echo/1.0"):
        assert_error(app.simulate_delete(path), 403, "InvalidModelVersionException",
                     "Cannot remove default version for model echo")
    assert_status(app.simulate_delete("/models/echo/2.0"), 200, 'Model "echo" unregistered')
    assert_status(app.simulate_delete("/models/alpha"), 200, 'Model "alpha" unregistered')
    assert sorted(control.core.models) == ["echo"]
    assert list(control.core.models["echo"]) == ["1.0"]
    # the only version left is the default: it may go
    assert_status(app.simulate_delete("/models/echo"), 200, 'Model "echo" unregistered')
    assert control.core.models == {}


def test_set_default(control):
    # ApiUtils.setDefault's message
    assert_status(call(control, "PUT", "/models/echo/1.0/set-default"), 200,
                  'Default version successfully updated for model "echo" to "1.0"')
    assert_status(call(control, "PUT", "/models/echo/2.0/set-default"), 200,
                  'Default version successfully updated for model "echo" to "2.0"')
    assert control.core.find_model("echo", None).config.version == "2.0"
    assert [m["modelVersion"] for m in call(control, "GET", "/models/echo").json] == ["2.0"]
    assert_error(call(control, "PUT", "/models/nope/1.0/set-default"), 404,
                 "ModelNotFoundException", "Model not found: nope")
    # ModelVersionedRefs.setDefaultVersion: its own words, without colons
    assert_error(call(control, "PUT", "/models/echo/9.9/set-default"), 404,
                 "ModelVersionNotFoundException", "Model version 9.9 does not exist for model echo")


# ------------------------------------------------------------------ description, paths

def test_options_root_is_the_openapi_description_of_what_is_served(control):
    result = call(control, "OPTIONS", "/")
    assert result.status_code == 200 and result.content == ts_json(result.json)
    document = result.json
    assert document["openapi"] == "3.0.1" and document["info"]["version"]
    assert call(control, "GET", "/api-description").json == document  # the deprecated path
    # every documented operation is routed (never 404 or 405), and every routed one documented
    concrete = {"{model_name}": "echo", "{model_version}": "1.0"}
    for path, operations in document["paths"].items():
        for name, value in concrete.items():
            path = path.replace(name, value)
        for method in operations:
            status = client_with_model_api(control, "/nonexistent").simulate_request(
                method.upper(), path, query_string="min_worker=1").status_code
            assert status not in (404, 405), (method, path)
    assert set(document["paths"]) == {
        "/", "/api-description", "/models", "/models/{model_name}",
        "/models/{model_name}/{model_version}",
        "/models/{model_name}/{model_version}/set-default"}


def test_options_on_a_model_is_its_management_api(control):
    document = call(control, "OPTIONS", "/models/echo").json
    for ref in refs(document) + refs(call(control, "OPTIONS", "/").json):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in document["components"]["schemas"], ref
    # OpenApiUtils.getModelManagementApi: "RESTful Management API for: " + modelName
    assert document["info"]["title"] == "RESTful Management API for: echo"
    assert set(document["paths"]) == {"/models/{model_name}",
                                      "/models/{model_name}/{model_version}",
                                      "/models/{model_name}/{model_version}/set-default"}
    assert_error(call(control, "OPTIONS", "/models/nope"), 404, "ModelNotFoundException",
                 "Model not found: nope")


@pytest.mark.parametrize("method, path, status, type_name, message", [
    ("GET", "/nothing", 404, "ResourceNotFoundException", NOT_FOUND),
    ("GET", "/models/echo/1.0/extra", 404, "ResourceNotFoundException", NOT_FOUND),
    ("GET", "/", 405, "MethodNotAllowedException", NOT_ALLOWED),
    ("OPTIONS", "/models", 405, "MethodNotAllowedException", NOT_ALLOWED),
    ("DELETE", "/models", 405, "MethodNotAllowedException", NOT_ALLOWED),
    ("PATCH", "/models/echo", 405, "MethodNotAllowedException", NOT_ALLOWED),
])
def test_unknown_paths_and_methods_in_torchserve_words(control, method, path, status,
                                                          type_name, message):
    assert_error(call(control, method, path), status, type_name, message)


def test_a_silent_broker_is_503(control):
    control.error = BrokerUnavailable("the broker did not answer")
    assert_error(call(control, "GET", "/models"), 503, "ServiceUnavailableException",
                 "the broker did not answer")


@pytest.mark.parametrize("text, value", [
    ("7", 7), ("+7", 7), ("-7", -7), ("007", 7), ("2147483647", 2**31 - 1),
    ("-2147483648", -2**31), ("2147483648", None), ("", None), (" 7", None), ("7 ", None),
    ("1_0", None), ("\u0663", None), ("0x10", None), ("1e3", None), (None, None),
])
def test_java_int_is_integer_parse_int(text, value):
    assert java_int(text) == value
