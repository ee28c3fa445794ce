"""The Open Inference Protocol (KServe v2) on a real server, called with tritonclient.http:
health, server and model metadata, readiness, and infer with FP32, INT64 and BYTES tensors in
JSON and in binary form (the handler gets numpy arrays, its outputs come back with their
shapes and datatypes), errors as InferenceServerException with the server's message, and the
inference key asked for on every v2 route but /v2/health/*."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.models import write_model_dir
from tests.support.servers import finish, start_server
from zerobatch import token_keys

pytestmark = pytest.mark.integration

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not "
                                 "installed (requirements-dev.txt)")
from tritonclient.utils import InferenceServerException  # noqa: E402

#: doubles each numeric input and upper-cases each BYTES one, output "<name>_out" of the
#: input's datatype; "plain" answers one bare array (the output "output__0")
TENSORS = """
    import numpy as np


    def handle(data, context):
        if data is None:
            return None
        results = []
        for row in data:
            request = row["body"]
            outputs = []
            for tensor in request["inputs"]:
                array = tensor["data"]
                if tensor["datatype"] == "BYTES":
                    out = np.array([item.decode().upper() for item in array.ravel()],
                                   dtype=object).reshape(array.shape)
                else:
                    out = array * 2
                outputs.append({"name": tensor["name"] + "_out",
                                "datatype": tensor["datatype"], "data": out})
            results.append({"outputs": outputs})
        return results
    """
PLAIN = """
    import numpy as np


    def handle(data, context):
        if data is None:
            return None
        return [row["body"]["inputs"][0]["data"].astype(np.float32) + 0.5 for row in data]
    """

#: infer_response: each output with its array's own datatype (FP64 here, not FP32)
TYPED = """
    import numpy as np

    from zerobatch.worker.tensors import infer_response


    def handle(data, context):
        if data is None:
            return None
        return [infer_response(third=row["body"]["inputs"][0]["data"].astype(np.float64) / 3)
                for row in data]
    """


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")
    started = start_server({"tensors": write_model_dir(str(root / "tensors"), TENSORS),
                            "plain": write_model_dir(str(root / "plain"), PLAIN),
                            "typed": write_model_dir(str(root / "typed"), TYPED)})
    yield started
    finish(started)


@pytest.fixture
def client(server):
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}",
                                          network_timeout=30) as triton:
        yield triton


def example_inputs(module, **options) -> tuple[list, dict]:
    """FP32, INT64 and BYTES inputs x, n, s as `module` (tritonclient.http or .grpc) builds
    them, set with `options` (binary_data for HTTP), and their arrays by name."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    n = np.array([[1, -2**40]], dtype=np.int64)
    s = np.array([b"hello", "wörld".encode()], dtype=object)
    inputs = []
    for name, array, datatype in (("x", x, "FP32"), ("n", n, "INT64"), ("s", s, "BYTES")):
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, **options)
        inputs.append(tensor)
    return inputs, {"x": x, "n": n, "s": s}


def _inputs(binary: bool) -> tuple[list, dict]:
    return example_inputs(httpclient, binary_data=binary)


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tensors")
    assert client.is_model_ready("tensors", "1.0")
    assert not client.is_model_ready("missing")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "zerobatch"
    assert "binary_tensor_data" in metadata["extensions"]
    assert client.get_model_metadata("tensors") == {
        "name": "tensors", "versions": ["1.0"], "platform": "zerobatch",
        "inputs": [], "outputs": []}
    assert client.get_model_metadata("tensors", "1.0")["versions"] == ["1.0"]
    with pytest.raises(InferenceServerException, match="Model missing not found"):
        client.get_model_metadata("missing")


@pytest.mark.parametrize("binary_inputs", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_outputs", [False, True], ids=["json-out", "binary-out"])
def test_infer_keeps_shapes_and_datatypes(client, binary_inputs, binary_outputs):
    inputs, arrays = _inputs(binary_inputs)
    outputs = [httpclient.InferRequestedOutput(f"{name}_out", binary_data=binary_outputs)
               for name in ("x", "n", "s")]
    result = client.infer("tensors", inputs, outputs=outputs, request_id="r-1")
    response = result.get_response()
    assert response["model_name"] == "tensors" and response["id"] == "r-1"
    x, n, s = (result.as_numpy(f"{name}_out") for name in ("x", "n", "s"))
    assert x.dtype == np.float32 and np.array_equal(x, arrays["x"] * 2)
    assert n.dtype == np.int64 and np.array_equal(n, arrays["n"] * 2)
    assert s.shape == (2,) and [bytes(item) if isinstance(item, bytes) else item.encode()
                                for item in s] == [b"HELLO", "WÖRLD".encode()]
    assert {o["name"]: o["datatype"] for o in response["outputs"]} == {
        "x_out": "FP32", "n_out": "INT64", "s_out": "BYTES"}


def test_infer_with_no_outputs_named_answers_every_output_in_binary(server, client):
    inputs, arrays = _inputs(True)
    result = client.infer("tensors", inputs, model_version="1.0")
    assert all("binary_data_size" in output["parameters"]
               for output in result.get_response()["outputs"])
    assert np.array_equal(result.as_numpy("n_out"), arrays["n"] * 2)
    plain = httpclient.InferInput("v", [3], "INT32")
    plain.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int32))
    answer = client.infer("plain", [plain])
    assert np.array_equal(answer.as_numpy("output__0"),
                          np.array([1.5, 2.5, 3.5], dtype=np.float32))
    typed = client.infer("typed", [plain]).as_numpy("third")
    assert typed.dtype == np.float64 and typed.tolist() == [1 / 3, 2 / 3, 1.0]


def test_errors_carry_the_servers_message(server, client):
    inputs, _arrays = _inputs(False)
    with pytest.raises(InferenceServerException, match="Model not found: missing") as caught:
        client.infer("missing", inputs)
    assert caught.value.status() == "404"
    wrong = httpclient.InferInput("x", [2, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32), binary_data=False)
    wrong.set_shape([4, 4])
    with pytest.raises(InferenceServerException,
                       match="input 'x': the shape holds 16 elements, the data 6") as caught:
        client.infer("tensors", [wrong])
    assert caught.value.status() == "400"
    wrong = httpclient.InferInput("x", [2, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32), binary_data=True)
    wrong.set_shape([4, 4])
    with pytest.raises(InferenceServerException,
                       match=r"shape \[4, 4\] of FP32 takes 64 bytes, binary_data_size is 24"):
        client.infer("tensors", [wrong])
    status, _headers, body = server.http("POST", "/v2/models/tensors/infer", b"{oops",
                                         {"Content-Type": "application/json"})
    assert status == 400 and json.loads(body)["error"].startswith("the request's JSON is not")


def test_v2_routes_but_health_need_the_inference_key(tmp_path):
    model = write_model_dir(str(tmp_path / "tensors"), TENSORS)
    server = start_server({"tensors": model}, "--token-auth")
    try:
        keys = token_keys.read_keys(os.path.join(server.run_dir, "key_file.json"))
        body = json.dumps({"inputs": [{"name": "v", "datatype": "INT64", "shape": [1],
                                       "data": [4]}]}).encode()
        assert server.http("GET", "/v2/health/live")[0] == 200
        assert server.http("GET", "/v2/health/ready")[0] == 200
        for path in ("/v2", "/v2/models/tensors", "/v2/models/tensors/ready"):
            status, _headers, answer = server.http("GET", path)
            assert status == 400 and "Token Authorization failed" in json.loads(answer)["error"]
        assert server.http("POST", "/v2/models/tensors/infer", body)[0] == 400
        status, headers, answer = server.http(
            "POST", "/v2/models/tensors/infer", body,
            {"Authorization": f"Bearer {keys.inference}", "x-request-id": "req-42"})
        assert status == 200
        assert {k.lower(): v for k, v in headers.items()}["x-request-id"] == "req-42"
        assert json.loads(answer)["outputs"] == [
            {"name": "v_out", "datatype": "INT64", "shape": [1], "data": [8]}]
    finally:
        finish(server)
