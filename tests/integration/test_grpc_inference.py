"""The Open Inference Protocol over gRPC on a real server (`--grpc-address`), called with
tritonclient.grpc from PyPI and with a plain stub of tritonclient's own generated messages:
health, metadata, readiness, infer with FP32, INT64, BYTES and FP64 tensors (raw contents and
typed contents), the request id, errors as gRPC statuses with the server's message, the
message size limit, the inference key in the metadata, and UNIMPLEMENTED for Triton's RPCs
outside the protocol."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from tests.integration.test_open_inference import PLAIN, TENSORS, TYPED, example_inputs
from tests.models import write_model_dir
from tests.support.metrics import value
from tests.support.servers import finish, free_port, start_server
from zerobatch import token_keys

pytestmark = pytest.mark.integration

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not "
                                 "installed (requirements-dev.txt)")
import grpc  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

#: the request size limit the server runs with (bytes), small enough to pass in a test
MAX_REQUEST = 200_000


def _wait_live(address: str, headers: dict | None = None, timeout_s: float = 30) -> None:
    """Until the gRPC process (started by the broker after `zerobatch start` returns)
    answers ServerLive."""
    deadline = time.monotonic() + timeout_s
    with grpcclient.InferenceServerClient(address) as triton:
        while True:
            try:
                if triton.is_server_live(headers=headers, client_timeout=2):
                    return
            except InferenceServerException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no gRPC service on {address}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc")
    port = free_port()
    started = start_server({"tensors": write_model_dir(str(root / "tensors"), TENSORS),
                            "plain": write_model_dir(str(root / "plain"), PLAIN),
                            "typed": write_model_dir(str(root / "typed"), TYPED)},
                           "--grpc-address", f"http://127.0.0.1:{port}",
                           "--max-request-size", str(MAX_REQUEST))
    started.grpc_address = f"127.0.0.1:{port}"
    try:
        _wait_live(started.grpc_address)
    except BaseException:
        finish(started)
        raise
    yield started
    finish(started)


@pytest.fixture
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_address) as triton:
        yield triton


def _inputs() -> tuple[list, dict]:
    return example_inputs(grpcclient)


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tensors")
    assert client.is_model_ready("tensors", "1.0")
    assert not client.is_model_ready("missing")
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "zerobatch" and metadata["version"]
    assert client.get_model_metadata("tensors", as_json=True) == {
        "name": "tensors", "versions": ["1.0"], "platform": "zerobatch"}
    with pytest.raises(InferenceServerException, match="Model missing not found") as caught:
        client.get_model_metadata("missing")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_infer_keeps_shapes_and_datatypes(client):
    inputs, arrays = _inputs()
    outputs = [grpcclient.InferRequestedOutput(f"{name}_out") for name in ("s", "x", "n")]
    result = client.infer("tensors", inputs, outputs=outputs, request_id="r-1",
                          model_version="1.0")
    response = result.get_response()
    assert response.model_name == "tensors" and response.model_version == "1.0"
    assert response.id == "r-1"
    assert [output.name for output in response.outputs] == ["s_out", "x_out", "n_out"]
    x, n, s = (result.as_numpy(f"{name}_out") for name in ("x", "n", "s"))
    assert x.dtype == np.float32 and np.array_equal(x, arrays["x"] * 2)
    assert n.dtype == np.int64 and n.shape == (1, 2) and np.array_equal(n, arrays["n"] * 2)
    assert s.tolist() == [b"HELLO", "WÖRLD".encode()]


def test_infer_without_outputs_named_answers_every_output(client):
    plain = grpcclient.InferInput("v", [3], "INT32")
    plain.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int32))
    answer = client.infer("plain", [plain])
    assert np.array_equal(answer.as_numpy("output__0"),
                          np.array([1.5, 2.5, 3.5], dtype=np.float32))
    typed = client.infer("typed", [plain]).as_numpy("third")
    assert typed.dtype == np.float64 and typed.tolist() == [1 / 3, 2 / 3, 1.0]


def test_typed_contents_are_read_as_raw_contents_are(server):
    """KServe's clients may send `contents` instead of raw bytes: the same tensors arrive."""
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="tensors", id="typed")
        x = request.inputs.add(name="x", datatype="FP32", shape=[2])
        x.contents.fp32_contents.extend([0.5, -1.25])
        n = request.inputs.add(name="n", datatype="INT64", shape=[1, 1])
        n.contents.int64_contents.append(-7)
        s = request.inputs.add(name="s", datatype="BYTES", shape=[1])
        s.contents.bytes_contents.append(b"abc")
        response = stub.ModelInfer(request, timeout=30)
        assert response.id == "typed"
        by_name = {output.name: (output, raw) for output, raw
                   in zip(response.outputs, response.raw_output_contents, strict=True)}
        assert np.frombuffer(by_name["x_out"][1], "<f4").tolist() == [1.0, -2.5]
        assert np.frombuffer(by_name["n_out"][1], "<i8").tolist() == [-14]
        assert list(by_name["n_out"][0].shape) == [1, 1]
        assert by_name["s_out"][1] == b"\x03\x00\x00\x00ABC"
        bad = service_pb2.ModelInferRequest(model_name="tensors")
        half = bad.inputs.add(name="h", datatype="FP16", shape=[1])
        half.contents.fp32_contents.append(1.0)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(bad, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "FP16 cannot travel in contents" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:  # Triton's, outside the protocol
            stub.ModelConfig(service_pb2.ModelConfigRequest(name="tensors"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_errors_are_statuses_with_the_servers_message(client):
    inputs, _arrays = _inputs()
    with pytest.raises(InferenceServerException, match="missing") as caught:
        client.infer("missing", inputs)
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    wrong = grpcclient.InferInput("x", [2, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
    wrong.set_shape([4, 4])
    with pytest.raises(InferenceServerException,
                       match=r"shape \[4, 4\] of FP32 takes 64 bytes, binary_data_size is 24"
                       ) as caught:
        client.infer("tensors", [wrong])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    big = grpcclient.InferInput("x", [MAX_REQUEST], "FP32")
    big.set_data_from_numpy(np.zeros(MAX_REQUEST, dtype=np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("tensors", [big])
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    result = client.infer("plain", [_one()])  # the server goes on serving
    assert result.as_numpy("output__0").tolist() == [1.5]


def _one():
    tensor = grpcclient.InferInput("v", [1], "INT64")
    tensor.set_data_from_numpy(np.array([1], dtype=np.int64))
    return tensor


def test_every_rpc_but_health_needs_the_inference_key(tmp_path):
    port = free_port()
    server = start_server({"plain": write_model_dir(str(tmp_path / "plain"), PLAIN)},
                          "--token-auth", "--grpc-address", f"http://127.0.0.1:{port}")
    try:
        address = f"127.0.0.1:{port}"
        _wait_live(address)
        keys = token_keys.read_keys(os.path.join(server.run_dir, "key_file.json"))
        key = {"authorization": f"Bearer {keys.inference}"}
        with grpcclient.InferenceServerClient(address) as triton:
            assert triton.is_server_ready()
            for call in (triton.get_server_metadata,
                         lambda: triton.get_model_metadata("plain"),
                         lambda: triton.is_model_ready("plain"),
                         lambda: triton.infer("plain", [_one()])):
                with pytest.raises(InferenceServerException,
                                   match="Token Authorization failed") as caught:
                    call()
                assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
            wrong = {"authorization": f"Bearer {keys.management}"}
            with pytest.raises(InferenceServerException, match="Token Authorization failed"):
                triton.infer("plain", [_one()], headers=wrong)
            assert triton.is_model_ready("plain", headers=key)
            answer = triton.infer("plain", [_one()], headers=key)
            assert answer.as_numpy("output__0").tolist() == [1.5]
    finally:
        finish(server)


def test_a_grpc_port_in_use_fails_at_start(tmp_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AssertionError, match="cannot bind") as caught:
            start_server({"plain": write_model_dir(str(tmp_path / "plain"), PLAIN)},
                         "--grpc-address", f"http://127.0.0.1:{port}")
    assert "grpc" in str(caught.value).lower()


def _requests_counted(server, model: str, version: str) -> float:
    _status, _headers, text = server.metrics("?name[]=ts_inference_requests_total")
    try:
        return value(text.decode(), "ts_inference_requests_total", model_name=model,
                     model_version=version)
    except (KeyError, AssertionError, ValueError):
        return 0.0


def test_predictions_over_grpc_and_v2_http_are_counted(server, client):
    """ts_inference_requests_total counts gRPC and /v2 infer requests as predictions."""
    before = _requests_counted(server, "plain", "default")
    before_version = _requests_counted(server, "plain", "1.0")
    for _ in range(3):
        client.infer("plain", [_one()])
    client.infer("plain", [_one()], model_version="1.0")
    body = b'{"inputs": [{"name": "v", "datatype": "INT64", "shape": [1], "data": [1]}]}'
    assert server.http("POST", "/v2/models/plain/infer", body)[0] == 200
    deadline = time.monotonic() + 20
    while (_requests_counted(server, "plain", "default"), _requests_counted(
            server, "plain", "1.0")) != (before + 4, before_version + 1):
        assert time.monotonic() < deadline, "the predictions were not counted"
        time.sleep(0.2)
