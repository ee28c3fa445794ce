"""Fuzz target: Open Inference Protocol requests, over HTTP (JSON and binary tensors) and gRPC
(ModelInferRequest bytes), checked and packed by the front end, then decoded by the worker.

An input's first byte picks the decoder, the rest is what a client sent:

- 0: an HTTP /v2 infer body of JSON only (api.tensors.parse_request, no header length);
- 1: the same with the binary extension, the next 2 bytes (u16 LE) its JSON header's length;
- 2: a gRPC ModelInferRequest's bytes (our descriptors, api.grpc_messages), then
  api.grpc_service.parse_infer.

What must hold: a request is either refused with TensorError (protobuf's DecodeError for
bytes that are no message at all) or accepted, and an accepted one's worker body decodes in
the worker (worker.tensors.decode_tensors) into arrays of the shapes and datatypes the request
declared; a handler's result of those arrays (infer_response; BYTES ones only when UTF-8, as
BYTES outputs travel as text) comes back through response_outputs and both response encoders
without an error.
"""

from __future__ import annotations

import json
import math

from tests.fuzz import _harness

with _harness.instrumented("zerobatch"):
    from google.protobuf.message import DecodeError

    from zerobatch.api import grpc_messages
    from zerobatch.api.grpc_service import infer_response, parse_infer
    from zerobatch.api.tensors import (
        TensorError,
        encode_response,
        parse_request,
        response_outputs,
    )
    from zerobatch.worker.tensors import DTYPES, decode_tensors
    from zerobatch.worker.tensors import infer_response as handler_result

JSON_ONLY, BINARY, GRPC = 0, 1, 2


def accepted(data: bytes):
    """The request the input's decoder accepted, or None when it was refused as it must be."""
    if not data:
        return None
    mode, rest = data[0] % 3, data[1:]
    try:
        if mode == JSON_ONLY:
            return parse_request(rest, None)
        if mode == BINARY:
            length = int.from_bytes(rest[:2], "little")
            return parse_request(rest[2:], str(length))
        return parse_infer(grpc_messages.ModelInferRequest.FromString(rest))
    except (TensorError, DecodeError):
        return None


def test_one_input(data: bytes) -> None:
    request = accepted(data)
    if request is None:
        return
    body = decode_tensors(request.body)
    outputs = {}
    for tensor in body["inputs"]:
        array = tensor["data"]
        assert list(array.shape) == tensor["shape"], (array.shape, tensor["shape"])
        if tensor["datatype"] == "BYTES":
            assert array.dtype == object and all(isinstance(x, bytes) for x in array.ravel())
            if not all(_utf8(x) for x in array.ravel()):
                continue  # BYTES outputs travel as text: infer_response refuses these
        else:
            assert array.dtype == DTYPES[tensor["datatype"]]
        outputs[tensor["name"]] = array
    request.outputs = None  # answer every output, whatever the request named
    result = json.loads(json.dumps(handler_result(**outputs), default=_jsonable))
    for output in response_outputs(result):
        assert math.prod(output["shape"]) == len(output["data"])
    try:
        encode_response(request, response_outputs(result), "m", None)
    except TensorError as exc:  # NaN or infinity cannot be JSON data: the one refusal
        assert "finite numbers" in str(exc), exc
    request.binary_output = True
    encode_response(request, response_outputs(result), "m", None)
    infer_response(request, result, "m", "")


def _utf8(element: bytes) -> bool:
    try:
        element.decode()
    except UnicodeDecodeError:
        return False
    return True


def _jsonable(value):
    """What worker.codec does with numpy arrays in a result: nested lists."""
    return value.tolist()


def seeds() -> list[bytes]:
    json_request = json.dumps({"id": "r", "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4.5]]},
        {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["hi"]},
        {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]}]}).encode()
    header = json.dumps({"inputs": [
        {"name": "x", "datatype": "INT16", "shape": [3],
         "parameters": {"binary_data_size": 6}},
        {"name": "s", "datatype": "BYTES", "shape": [2],
         "parameters": {"binary_data_size": 11}}],
        "outputs": [{"name": "x_out", "parameters": {"binary_data": True}}]}).encode()
    binary = header + b"\x01\x00\x02\x00\xff\xff" + b"\x03\x00\x00\x00abc\x00\x00\x00\x00"
    grpc_request = grpc_messages.ModelInferRequest(model_name="m", id="g")
    tensor = grpc_request.inputs.add(name="x", datatype="FP64", shape=[2])
    tensor.contents.fp64_contents.extend([0.5, -1.0])
    raw = grpc_messages.ModelInferRequest(model_name="m")
    raw.inputs.add(name="y", datatype="UINT8", shape=[1, 3])
    raw.raw_input_contents.append(b"\x01\x02\x03")
    return [bytes([JSON_ONLY]) + json_request,
            bytes([BINARY]) + len(header).to_bytes(2, "little") + binary,
            bytes([GRPC]) + grpc_request.SerializeToString(),
            bytes([GRPC]) + raw.SerializeToString()]


if __name__ == "__main__":
    _harness.run("tensors", test_one_input, seeds())
