"""The gRPC service's messages and conversions without a server: our descriptors read and
write what tritonclient's generated messages do (the wire format is the contract), a
ModelInferRequest becomes the worker body the HTTP route would send, and a handler's result
becomes raw output contents."""

from __future__ import annotations

import struct

import msgpack
import pytest

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (requirements-dev.txt)")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")

from zerobatch.api import grpc_messages as messages  # noqa: E402
from zerobatch.api.grpc_service import (  # noqa: E402
    infer_response,
    parse_infer,
    status_code,
)
from zerobatch.api.tensors import TensorError, parse_request  # noqa: E402


def _request() -> object:
    request = service_pb2.ModelInferRequest(model_name="m", model_version="2", id="r")
    request.parameters["priority"].int64_param = 3
    x = request.inputs.add(name="x", datatype="FP32", shape=[2])
    x.parameters["note"].string_param = "hi"
    request.inputs.add(name="s", datatype="BYTES", shape=[1])
    request.raw_input_contents.extend([struct.pack("<2f", 1.5, -2.0), b"\x02\x00\x00\x00ok"])
    request.outputs.add(name="y")
    return request


@pytest.mark.parametrize("name", sorted(messages.MESSAGES))
def test_every_message_has_tritonclients_fields(name):
    ours = messages.CLASSES[name].DESCRIPTOR
    theirs = service_pb2.DESCRIPTOR.message_types_by_name[name.split(".")[0]]
    for part in name.split(".")[1:]:
        theirs = theirs.nested_types_by_name[part]
    assert {(f.name, f.number, f.type, f.is_repeated) for f in ours.fields} == {
        (f.name, f.number, f.type, f.is_repeated) for f in theirs.fields}


def test_a_request_round_trips_through_our_messages():
    wire = _request().SerializeToString()
    assert messages.ModelInferRequest.FromString(wire).SerializeToString() == wire


def test_raw_inputs_become_the_body_the_http_route_sends():
    request = parse_infer(messages.ModelInferRequest.FromString(_request().SerializeToString()))
    body = msgpack.unpackb(request.body, raw=False)
    assert body["id"] == "r" and body["parameters"] == {"priority": 3}
    x, s = body["inputs"]
    assert x == {"name": "x", "datatype": "FP32", "shape": [2],
                 "data": struct.pack("<2f", 1.5, -2.0), "parameters": {"note": "hi"}}
    assert s["data"] == [b"ok"]
    assert request.outputs == {"y": True}
    http = parse_request(b'{"id": "r", "inputs": [{"name": "x", "datatype": "FP32", '
                         b'"shape": [2], "data": [1.5, -2.0]}]}', None)
    assert msgpack.unpackb(http.body, raw=False)["inputs"][0]["data"] == x["data"]


def test_typed_contents_are_checked_like_json_data():
    request = messages.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="n", datatype="INT8", shape=[2])
    tensor.contents.int_contents.extend([1, 300])
    with pytest.raises(TensorError, match="does not fit INT8"):
        parse_infer(request)
    tensor.contents.int_contents[1] = -3
    assert msgpack.unpackb(parse_infer(request).body, raw=False)["inputs"][0]["data"] == \
        struct.pack("<2b", 1, -3)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.raw_input_contents.pop(), "give one per input, or none"),
    (lambda r: r.inputs[0].shape.append(3), "takes 24 bytes, binary_data_size is 8"),
    (lambda r: setattr(r.inputs[0], "datatype", "FP128"), "is not one of"),
    (lambda r: r.inputs[0].contents.fp32_contents.append(1.0), "both contents and"),
])
def test_malformed_requests_say_what_is_wrong(mutate, message):
    request = messages.ModelInferRequest.FromString(_request().SerializeToString())
    mutate(request)
    with pytest.raises(TensorError, match=message):
        parse_infer(request)


def test_results_become_raw_output_contents_in_the_requested_order():
    request = messages.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT64", shape=[1]).contents.int64_contents.append(1)
    request.outputs.add(name="b")
    request.outputs.add(name="a")
    response = infer_response(parse_infer(request), {"a": [[1, 2]], "b": ["x"], "c": 1.0},
                              "m", "")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("b", "BYTES", [1]), ("a", "INT64", [1, 2])]
    assert list(response.raw_output_contents) == [b"\x01\x00\x00\x00x",
                                                  struct.pack("<2q", 1, 2)]
    request.outputs.add(name="z")
    with pytest.raises(TensorError, match="no output named 'z'"):
        infer_response(parse_infer(request), {"a": 1, "b": 2}, "m", "")


def test_statuses_map_to_grpc_codes():
    assert status_code(404) == grpc.StatusCode.NOT_FOUND
    assert status_code(503) == grpc.StatusCode.UNAVAILABLE
    assert status_code(504) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert status_code(418) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code(500) == grpc.StatusCode.INTERNAL


def test_start_refuses_a_grpc_address_it_cannot_serve(monkeypatch):
    from zerobatch.api.cli import CliError, check_grpc
    from zerobatch.broker.supervisor import grpc_config
    from zerobatch.config import ServerConfig
    from zerobatch.errors import ConfigError

    with pytest.raises(ConfigError, match="grpc_address"):
        check_grpc(ServerConfig(grpc_address="tcp://127.0.0.1:1"))
    with pytest.raises(ConfigError, match="https:// needs a certificate"):
        ServerConfig(grpc_address="https://127.0.0.1:1")
    config = ServerConfig(grpc_address="http://0.0.0.0")
    check_grpc(config)
    served = grpc_config(config, "ipc://front")
    assert (served.host, served.port, served.certificate_file) == ("0.0.0.0", 7070, "")
    monkeypatch.setitem(__import__("sys").modules, "grpc", None)  # grpcio not installed
    with pytest.raises(CliError, match=r"pip install 'zerobatch\[grpc\]'"):
        check_grpc(config)


def test_an_unexpected_failure_is_internal_without_its_text(caplog):
    import asyncio

    from zerobatch.api.grpc_service import InferenceService

    class Aborted(Exception):
        pass

    class Context:
        async def abort(self, code, details):
            self.status = (code, details)
            raise Aborted

    async def failing(request, context):
        raise TypeError("secret /srv/models/m/handler.py")

    context = Context()
    with pytest.raises(Aborted):
        asyncio.run(InferenceService._answering(failing)(None, context))
    assert context.status == (grpc.StatusCode.INTERNAL, "internal error")
    assert "secret" in caplog.text  # the log has it
