"""KServe's v1 protocol (api/kserve_v1.py) in process: the inference app over a fake
AsyncClient that answers the `models` control call and predicts, and the worker's own form
decoder to show what row a handler gets for each instance."""

from __future__ import annotations

import json

import falcon.testing
import pytest

from zerobatch import token_keys
from zerobatch.api import kserve_v1
from zerobatch.api.aio_client import Reply
from zerobatch.api.http_app import create_app
from zerobatch.api.token_auth import INVALID_KEY_BODY
from zerobatch.config import FrontendConfig
from zerobatch.errors import (
    BrokerUnavailable,
    DeadlineExceeded,
    HandlerError,
    ModelNotFound,
    PredictionError,
    QueueFull,
)
from zerobatch.worker.codec import decode_body
from zerobatch.worker.forms import MAX_FIELDS, decode_form


def entry(name: str, *, ready: bool = True, max_queue: int | None = None,
          version: str = "1.0", default: bool = True) -> dict:
    """One model version as the broker's `models` control call lists it (maxQueue: where
    it gives one)."""
    fields = {"modelName": name, "modelVersion": version, "default": default, "ready": ready}
    return fields if max_queue is None else {**fields, "maxQueue": max_queue}


def row_of(body: bytes, content_type: str):
    """The row the worker hands its handler for this request (worker/service.py)."""
    form = decode_form(content_type, body)
    return {"body": decode_body(content_type, body)} if form is None else form[0]


class FakeClient:
    """The AsyncClient calls the v1 routes make. The `models` control call answers `models`
    (or raises it), counted in `listings`;
    a predict answers `answer(row)`: a value (JSON), a Reply, or an error to raise."""

    def __init__(self) -> None:
        self.models: list[dict] | Exception = [entry("echo"), entry("idle", ready=False)]
        self.listings = 0
        self.sent: list[dict] = []
        self.answer = lambda row: row

    async def control(self, op: str, *, timeout_ms: int | None = None, **args) -> dict:
        if op != "models":
            return {"status": "Healthy"} if op == "ping" else {"ready": True}
        self.listings += 1
        if isinstance(self.models, Exception):
            raise self.models
        return {"models": self.models}

    async def predict(self, model: str, body: bytes, *, version=None, timeout_ms=None,
                      content_type=None, headers=None, request_id=None) -> Reply:
        row = row_of(body, content_type)
        self.sent.append({"model": model, "row": row, "content_type": content_type,
                          "headers": headers, "request_id": request_id,
                          "timeout_ms": timeout_ms})
        if model not in {e["modelName"] for e in self.models}:
            raise ModelNotFound(f"Model not found: {model}")
        answer = self.answer(row)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, Reply):
            return answer
        return Reply(200, "application/json", None, json.dumps(answer).encode())


@pytest.fixture
def fake() -> FakeClient:
    return FakeClient()


def make_client(fake, **config) -> falcon.testing.TestClient:
    settings = {"broker_address": "ipc:///nowhere", "max_request_bytes": 4096, **config}
    return falcon.testing.TestClient(create_app(FrontendConfig(**settings), fake))


@pytest.fixture
def client(fake) -> falcon.testing.TestClient:
    return make_client(fake)


def predict(client, model: str, payload, headers=None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.simulate_post(f"/v1/models/{model}:predict", body=body,
                                headers={"Content-Type": "application/json", **(headers or {})})


# ------------------------------------------------------------------ models and readiness

def test_the_model_list_names_each_model_once(client, fake):
    fake.models.append(entry("echo", version="2.0", default=False))
    result = client.simulate_get("/v1/models")
    assert result.status_code == 200 and result.json == {"models": ["echo", "idle"]}


def test_a_model_is_ready_when_the_broker_says_so(client, fake, monkeypatch):
    assert client.simulate_get("/v1/models/echo").json == {"name": "echo", "ready": True}
    result = client.simulate_get("/v1/models/idle")
    assert result.status_code == 503 and result.json == {
        "name": "idle", "ready": False, "error": "Model with name idle is not ready."}
    fake.models = [entry("echo", ready=False)]
    monkeypatch.setattr(kserve_v1, "MODELS_TTL_NS", 0)
    assert client.simulate_get("/v1/models/echo").json["ready"] is False


def test_an_unknown_model_is_404_in_kserve_shape(client):
    result = client.simulate_get("/v1/models/nope")
    assert result.status_code == 404
    assert result.json == {"error": "Model with name nope does not exist."}


def test_a_silent_broker_answers_its_error_status(client, fake):
    fake.models = BrokerUnavailable("the broker did not answer")
    for path in ("/v1/models", "/v1/models/echo"):
        result = client.simulate_get(path)
        assert result.status_code == 503 and "did not answer" in result.json["error"]


def test_the_model_list_is_cached_and_asked_again_for_a_name_it_lacks(client, fake, monkeypatch):
    monkeypatch.setattr(kserve_v1, "MODELS_TTL_NS", 60 * 10**9)
    monkeypatch.setattr(kserve_v1, "MODELS_RETRY_NS", 60 * 10**9)
    for _ in range(3):
        assert client.simulate_get("/v1/models/echo").status_code == 200
    assert fake.listings == 1
    for _ in range(3):  # unknown names cost no call while the answer is young
        assert client.simulate_get("/v1/models/nope").status_code == 404
    assert fake.listings == 1
    monkeypatch.setattr(kserve_v1, "MODELS_RETRY_NS", 0)
    fake.models.append(entry("new"))  # registered since: not a 404
    assert client.simulate_get("/v1/models/new").json == {"name": "new", "ready": True}
    assert fake.listings == 2


# ------------------------------------------------------------------ predictions

def test_predictions_come_back_in_instance_order_one_request_each(client, fake):
    fake.answer = lambda row: {"got": row}
    instances = [{"data": "aGk=", "target": 0}, [1, 2], 3.5, "text", None, {}]
    result = predict(client, "echo", {"instances": instances})
    assert result.status_code == 200, result.text
    assert result.json == {"predictions": [
        {"got": {"data": "aGk=", "target": 0}}, {"got": {"body": [1, 2]}},
        {"got": {"body": 3.5}}, {"got": {"body": "text"}}, {"got": {"body": None}},
        {"got": {"body": {}}}]}
    assert [sent["model"] for sent in fake.sent] == ["echo"] * len(instances)
    first = fake.sent[0]
    assert first["content_type"].startswith("multipart/form-data; boundary=")
    assert first["headers"]["content-type"] == first["content_type"]
    assert first["headers"]["explain"] == "False" and "content-length" not in first["headers"]
    assert fake.sent[1]["content_type"] == "application/json"


def test_an_object_instance_is_the_handlers_row_whatever_its_keys(client, fake):
    keys = ['quo"te', "back\\slash", "semi;colon", "eq=al", "ünï", "sp ace", "a--b"]
    instance = {key: [index, {"nested": key}] for index, key in enumerate(keys)}
    result = predict(client, "echo", {"instances": [instance]})
    assert result.status_code == 200 and result.json == {"predictions": [instance]}


def test_inputs_are_instances_and_win_over_them(client, fake):
    result = predict(client, "echo", {"inputs": [1], "instances": [2, 3]})
    assert result.json == {"predictions": [{"body": 1}]}


def test_no_instances_predict_nothing_but_the_model_must_exist(client, fake):
    assert predict(client, "echo", {"instances": []}).json == {"predictions": []}
    assert predict(client, "nope", {"instances": []}).status_code == 404
    assert fake.sent == []


def test_replies_decode_by_their_content_type(client, fake):
    replies = iter([Reply(200, "application/json; charset=utf-8", None, b'{"a": 1}'),
                    Reply(200, "text/plain; charset=latin-1", None, "é".encode("latin-1")),
                    Reply(200, "application/octet-stream", None, b"plain"),
                    Reply(200, "application/octet-stream", None, b"\xff\x00"),
                    Reply(200, "application/json", None, b"not json"),
                    Reply(200, None, None, b"[1]")])
    fake.answer = lambda row: next(replies)
    result = predict(client, "echo", {"instances": [0] * 6})
    assert result.json == {"predictions": [{"a": 1}, "é", "plain", {"b64": "/wA="},
                                           "not json", [1]]}


def test_the_request_id_and_deadline_reach_each_instance(client, fake):
    result = predict(client, "echo", {"instances": [1, 2]},
                     {"x-request-id": "abc", "x-zerobatch-timeout-ms": "250"})
    assert result.headers["x-request-id"] == "abc"
    assert [sent["request_id"] for sent in fake.sent] == ["abc-0", "abc-1"]
    assert {sent["timeout_ms"] for sent in fake.sent} == {250}


# ------------------------------------------------------------------ refusals and failures

@pytest.mark.parametrize("body, words", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"data": [1]}', 'no "instances"'),
    (b'{"instances": {"a": 1}}', 'Expected "instances" to be a list'),
    (b'{"inputs": 3}', 'Expected "inputs" to be a list'),
    (b'{"instances": [{"": 1}]}', "must be non-empty"),
    (b'{"instances": [1, {"a\\nb": 1}]}', "instance 1 has the key"),
])
def test_a_bad_body_is_400_saying_what_is_wrong(client, fake, body, words):
    result = predict(client, "echo", body)
    assert result.status_code == 400 and words in result.json["error"], result.text
    assert fake.sent == []


def test_an_instance_may_have_as_many_keys_as_a_form_has_fields(fake):
    assert kserve_v1.MAX_INSTANCE_KEYS == MAX_FIELDS
    client = make_client(fake, max_request_bytes=1 << 20)
    instance = {f"k{i}": i for i in range(MAX_FIELDS)}
    assert predict(client, "echo", {"instances": [instance]}).json == {
        "predictions": [instance]}
    result = predict(client, "echo", {"instances": [dict(instance, one_more=1)]})
    assert result.status_code == 400 and "at most 1000" in result.json["error"]


def test_more_instances_than_the_models_queue_are_400(client, fake):
    fake.models = [entry("echo", max_queue=3)]
    assert predict(client, "echo", {"instances": [0] * 3}).status_code == 200
    result = predict(client, "echo", {"instances": [0] * 4})
    assert result.status_code == 400 and "at most 3" in result.json["error"]
    assert "max_queue" in result.json["error"] and len(fake.sent) == 3


def test_without_a_model_list_a_constant_limits_and_the_broker_judges_the_model(fake,
                                                                          monkeypatch):
    monkeypatch.setattr(kserve_v1, "MODELS_TTL_NS", 60 * 10**9)
    fake.models = [entry("echo")]
    client = make_client(fake, max_request_bytes=1 << 20)
    fake.models = BrokerUnavailable("the broker did not answer")
    result = predict(client, "echo", {"instances": [0] * (kserve_v1.MAX_INSTANCES + 1)})
    assert result.status_code == 400 and "this server's limit" in result.json["error"]
    assert fake.sent == []
    fake.models = [entry("echo")]  # predictions still go; the cached refusal stands
    assert predict(client, "echo", {"instances": [1]}).json == {"predictions": [{"body": 1}]}
    assert predict(client, "nope", {"instances": [1]}).json == {
        "error": "Model not found: nope"}
    assert fake.listings == 1


def test_an_unknown_model_is_404_before_anything_is_sent(client, fake):
    result = predict(client, "nope", {"instances": [1, 2]})
    assert result.status_code == 404 and result.json == {
        "error": "Model with name nope does not exist."}
    assert fake.sent == []


@pytest.mark.parametrize("error, status, message", [
    (HandlerError("boom in /srv/run/models/echo/handler.py"), 500,
     "instance 1: boom in handler.py"),
    (PredictionError("bad pixel", status=422), 422, "instance 1: bad pixel"),
    (QueueFull("the queue of echo is full"), 503, "the queue of echo is full"),
    (DeadlineExceeded("too late"), 504, "too late"),
])
def test_a_failing_instance_fails_the_request_with_its_status(client, fake, error, status,
                                                              message):
    fake.answer = lambda row: error if row["body"] in (1, 2) else row
    result = predict(client, "echo", {"instances": [0, 1, 2]})
    assert result.status_code == status and result.json == {"error": message}
    assert len(fake.sent) == 3  # all were sent at once


def test_a_reply_with_an_error_status_is_a_failure(client, fake):
    fake.answer = lambda row: (Reply(422, "application/json", None,
                                     b'{"code": 422, "message": "no cats"}')
                               if row["body"] else row)
    result = predict(client, "echo", {"instances": [0, 1]})
    assert result.status_code == 422 and result.json == {"error": "instance 1: no cats"}


def test_a_body_over_the_limit_is_413(client, fake):
    result = predict(client, "echo", {"instances": ["x" * 5000]})
    assert result.status_code == 413 and "exceeds the limit" in result.json["error"]


def test_explanations_are_predictions_marked_explain_and_answered_as_explanations(client,
                                                                                   fake):
    fake.answer = lambda row: {"why": row}
    result = client.simulate_post("/v1/models/echo:explain",
                                  body=b'{"instances": [{"data": "hi"}, 2]}')
    assert result.status_code == 200, result.text
    assert result.json == {"explanations": [{"why": {"data": "hi"}}, {"why": {"body": 2}}]}
    assert [sent["headers"]["explain"] for sent in fake.sent] == ["True", "True"]
    assert all("url_path" not in sent["headers"] for sent in fake.sent)


def test_an_explanation_fails_as_a_prediction_does(client, fake):
    fake.answer = lambda row: HandlerError("no insights")
    result = client.simulate_post("/v1/models/echo:explain", body=b'{"instances": [1]}')
    assert result.status_code == 500 and result.json == {"error": "instance 0: no insights"}
    assert client.simulate_post("/v1/models/nope:explain",
                                body=b'{"instances": [1]}').status_code == 404


def test_routes_and_methods(client):
    assert client.simulate_get("/v1/models/echo:predict").status_code == 405
    assert client.simulate_post("/v1/models/echo").status_code == 405
    assert client.simulate_post("/v1/models/:predict", body=b"{}").status_code == 405
    assert client.simulate_get("/v1/models/").status_code == 404


@pytest.fixture
def live_key_file(tmp_path):
    path = str(tmp_path / "key_file.json")
    token_keys.create_key_file(path, 60)
    return path


def test_token_authorization_guards_all_but_readiness(fake, live_key_file):
    client = make_client(fake, key_file=live_key_file)
    key = token_keys.read_keys(live_key_file).inference
    for result in (predict(client, "echo", {"instances": [1]}),
                   client.simulate_get("/v1/models"),
                   client.simulate_post("/v1/models/echo:explain", body=b"{}")):
        assert result.status_code == 400 and result.content == INVALID_KEY_BODY
    assert fake.sent == []
    assert client.simulate_get("/v1/models/echo").status_code == 200
    auth = {"Authorization": f"Bearer {key}"}
    assert predict(client, "echo", {"instances": [1]}, auth).status_code == 200
    assert client.simulate_get("/v1/models", headers=auth).status_code == 200
