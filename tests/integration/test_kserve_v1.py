"""KServe's v1 protocol (api/kserve_v1.py) on a real server: the model list and readiness
from the broker's describe, predictions whose instances are batched by the broker and come
back in order, each object instance reaching the handler as its row (TorchServe's KServe
envelope's rows), and the refusals and failures in KServe's {"error": ...} shape."""

from __future__ import annotations

import base64
import json

import pytest

from tests.models import write_model_dir
from tests.support.servers import finish, start_server
from zerobatch.api.kserve_v1 import MAX_INSTANCES

pytestmark = pytest.mark.integration

#: each row back with the size of the batch it came in; a row that asks for it fails
#: alone with its own status, and a row {"raise": ...} fails its whole batch
BATCHER = """
    import os

    def handle(data, context):
        if data is None:
            return None
        for row in data:
            if isinstance(row, dict) and "raise" in row:
                raise ValueError("cannot read " + os.path.abspath("weights.pt"))
        answers = []
        for index, row in enumerate(data):
            if row.get("status"):
                context.set_response_status(row["status"], "refused", index)
                answers.append({"message": "this row asked to fail"})
            else:
                answers.append({"row": row, "batch": len(data)})
        return answers
    """


#: how TorchServe's VisionHandler reads a row (KServe's MNIST example sends
#: {"instances": [{"data": "<base64 PNG>"}]}): the "data" field, base64 when a str
VISION_ROWS = """
    import base64

    def handle(data, context):
        if data is None:
            return None
        answers = []
        for row in data:
            image = row.get("data") or row.get("body")
            if isinstance(image, str):
                image = base64.b64decode(image)
            answers.append(image.decode())
        return answers
    """


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("kserve")
    models = {"batcher": write_model_dir(str(root / "batcher"), BATCHER),
              "vision": write_model_dir(str(root / "vision"), VISION_ROWS)}
    server = start_server(models, "--batch-size", "8", "--max-batch-delay", "50")
    try:
        yield server
    finally:
        finish(server)


def get(server, path: str) -> tuple[int, dict]:
    status, _headers, body = server.http("GET", path)
    return status, json.loads(body)


def predict(server, model: str, body) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _headers, answer = server.http("POST", f"/v1/models/{model}:predict", raw,
                                           {"Content-Type": "application/json"})
    return status, json.loads(answer)


def test_the_model_list_and_its_readiness(server):
    assert get(server, "/v1/models") == (200, {"models": ["batcher", "vision"]})
    assert get(server, "/v1/models/batcher") == (200, {"name": "batcher", "ready": True})
    status, answer = get(server, "/v1/models/nope")
    assert status == 404 and answer == {"error": "Model with name nope does not exist."}


def test_instances_are_batched_and_answered_in_order(server):
    instances = [{"data": f"image-{i}", "target": i} if i % 2 else [i, i] for i in range(8)]
    status, answer = predict(server, "batcher", {"instances": instances})
    assert status == 200, answer
    predictions = answer["predictions"]
    # an object instance is the handler's row itself, anything else its "body"
    assert [p["row"] for p in predictions] == [
        instance if isinstance(instance, dict) else {"body": instance}
        for instance in instances]
    assert max(p["batch"] for p in predictions) > 1, predictions


def test_kserves_mnist_request_reads_as_torchserves_handlers_read_it(server):
    instances = [{"data": base64.b64encode(f"png {i}".encode()).decode(), "target": i}
                 for i in range(3)]
    status, answer = predict(server, "vision", {"instances": instances})
    assert (status, answer) == (200, {"predictions": ["png 0", "png 1", "png 2"]})


def test_inputs_are_taken_as_instances(server):
    status, answer = predict(server, "batcher", {"inputs": ["a"]})
    assert status == 200 and answer["predictions"][0]["row"] == {"body": "a"}


def test_an_unknown_model_is_404(server):
    status, answer = predict(server, "nope", {"instances": [1]})
    assert status == 404 and answer == {"error": "Model with name nope does not exist."}


@pytest.mark.parametrize("body, words", [
    (b"{oops", "not JSON"),
    (b'{"instance": [1]}', 'no "instances"'),
    (b'{"instances": 1}', 'Expected "instances" to be a list'),
    (json.dumps({"instances": [0] * (MAX_INSTANCES + 1)}).encode(), "instances in one request"),
])
def test_a_bad_body_is_400(server, body, words):
    status, answer = predict(server, "batcher", body)
    assert status == 400 and words in answer["error"], answer


def test_a_failing_instance_fails_the_request_with_its_status(server):
    status, answer = predict(server, "batcher", {"instances": [{"a": 1}, {"status": 422}]})
    assert (status, answer) == (422, {"error": "instance 1: this row asked to fail"})


def test_a_handler_that_raises_fails_the_request_without_server_paths(server):
    status, answer = predict(server, "batcher", {"instances": [{"raise": True}]})
    assert status == 500 and answer["error"].startswith("instance 0: ")
    assert "weights.pt" in answer["error"] and "/" not in answer["error"], answer


def test_explanations_come_back_in_instance_order(server):
    status, _headers, body = server.http("POST", "/v1/models/batcher:explain",
                                         b'{"instances": [1, {"data": "a"}]}')
    assert status == 200, body
    rows = [answer["row"] for answer in json.loads(body)["explanations"]]
    assert rows == [{"body": 1}, {"data": "a"}]
