"""The Open Inference Protocol's tensors: a v2 request checked and packed in the front end
(api/tensors.py), decoded into numpy arrays in the worker (worker/tensors.py, through the
codec), and a handler's JSON result answered as v2 outputs, JSON or binary; bad requests
raise TensorError with what was wrong."""

from __future__ import annotations

import json
import struct

import msgpack
import numpy as np
import pytest

from zerobatch.api.tensors import (
    TENSORS_TYPE,
    TensorError,
    encode_response,
    join_bytes,
    parse_request,
    response_outputs,
)
from zerobatch.worker import tensors as worker_tensors
from zerobatch.worker.codec import decode_body


def _json_request(*inputs: dict, **fields) -> bytes:
    return json.dumps({"inputs": list(inputs), **fields}).encode()


def _binary_request(header: dict, *chunks: bytes) -> tuple[bytes, str]:
    text = json.dumps(header).encode()
    return text + b"".join(chunks), str(len(text))


def _decoded(body: bytes, header_length: str | None = None) -> dict:
    """What the handler gets for a request, through the worker's codec."""
    return decode_body(TENSORS_TYPE, parse_request(body, header_length).body)


def test_the_content_types_agree():
    assert worker_tensors.TENSORS_TYPE == TENSORS_TYPE


def test_json_inputs_reach_the_handler_as_arrays_of_their_datatype_and_shape():
    body = _json_request(
        {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2.5], [3, 4]]},
        {"name": "n", "datatype": "INT64", "shape": [3], "data": [1, -2, 2**40]},
        {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        {"name": "h", "datatype": "FP16", "shape": [1], "data": [0.5]},
        {"name": "s", "datatype": "BYTES", "shape": [2, 1], "data": ["héllo", "w"]},
        id="r1", parameters={"p": 1})
    request = _decoded(body)
    assert request["id"] == "r1" and request["parameters"] == {"p": 1}
    arrays = worker_tensors.inputs_by_name(request)
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (2, 2)
    assert arrays["x"].tolist() == [[1.0, 2.5], [3.0, 4.0]]
    assert arrays["n"].dtype == np.int64 and arrays["n"].tolist() == [1, -2, 2**40]
    assert arrays["b"].dtype == np.bool_ and arrays["b"].tolist() == [True, False]
    assert arrays["h"].dtype == np.float16 and arrays["h"].tolist() == [0.5]
    assert arrays["s"].dtype == object and arrays["s"].shape == (2, 1)
    assert arrays["s"].tolist() == [["héllo".encode()], [b"w"]]
    arrays["x"][0, 0] = 7  # the handler's own copy
    assert request["outputs"] is None


def test_binary_inputs_follow_the_json_header_in_order():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    n = np.array([5, 6], dtype=np.int64)
    words = join_bytes([b"ab", b"", b"\xff"])
    body, length = _binary_request({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 3],
         "parameters": {"binary_data_size": x.nbytes}},
        {"name": "s", "datatype": "BYTES", "shape": [3],
         "parameters": {"binary_data_size": len(words)}},
        {"name": "n", "datatype": "INT64", "shape": [2], "data": [5, 6]},
    ]}, x.tobytes(), words)
    arrays = worker_tensors.inputs_by_name(_decoded(body, length))
    assert np.array_equal(arrays["x"], x) and arrays["x"].dtype == np.float32
    assert arrays["s"].tolist() == [b"ab", b"", b"\xff"]
    assert np.array_equal(arrays["n"], n)


def test_requested_outputs_travel_to_the_handler():
    body = _json_request({"name": "x", "datatype": "INT8", "shape": [1], "data": [1]},
                         outputs=[{"name": "y", "parameters": {"binary_data": True}}])
    request = parse_request(body, None)
    assert request.outputs == {"y": True}
    assert msgpack.unpackb(request.body)["outputs"] == [{"name": "y"}]


@pytest.mark.parametrize("body, header_length, message", [
    (b"{not json", None, "JSON is not valid"),
    (b"[]", None, "must be a JSON object"),
    (_json_request(), None, '"inputs" must be a non-empty list'),
    (_json_request({"datatype": "FP32", "shape": [1], "data": [1]}), None, 'needs a "name"'),
    (_json_request({"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}), None,
     "datatype 'FP8' is not one of"),
    (_json_request({"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}), None,
     '"shape" must be a list'),
    (_json_request({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}),
     None, "input 'x': the shape holds 4 elements, the data 3"),
    (_json_request({"name": "x", "datatype": "INT32", "shape": [1], "data": [2**40]}), None,
     "data does not fit INT32"),
    (_json_request({"name": "x", "datatype": "UINT8", "shape": [1], "data": [-1]}), None,
     "data does not fit UINT8"),
    (_json_request({"name": "x", "datatype": "INT64", "shape": [1], "data": [1.5]}), None,
     "does not fit INT64"),
    (_json_request({"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}), None,
     "FP32 data must be numbers"),
    (_json_request({"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}), None,
     "BOOL data must be true or false"),
    (_json_request({"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}), None,
     "BYTES data must be strings"),
    (_json_request({"name": "x", "datatype": "FP32", "shape": [1]}), None,
     'neither "data" nor binary_data_size'),
    (_json_request({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
                   outputs=[{"parameters": {}}]), None, 'output 0 needs a "name"'),
    (b"{}", "9", "Inference-Header-Content-Length '9' is not a length"),
    (b"{}", "x", "Inference-Header-Content-Length 'x' is not a length"),
])
def test_a_bad_request_says_what_is_wrong(body, header_length, message):
    with pytest.raises(TensorError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_request(body, header_length)


@pytest.mark.parametrize("inputs, chunks, message", [
    ([{"name": "x", "datatype": "FP32", "shape": [2],
       "parameters": {"binary_data_size": 4}}], [b"\0" * 4],
     "shape [2] of FP32 takes 8 bytes, binary_data_size is 4"),
    ([{"name": "x", "datatype": "FP32", "shape": [1],
       "parameters": {"binary_data_size": 8}}], [b"\0" * 4], "runs past the body's end"),
    ([{"name": "x", "datatype": "FP32", "shape": [1],
       "parameters": {"binary_data_size": 4}}], [b"\0" * 6], "2 bytes after the last"),
    ([{"name": "s", "datatype": "BYTES", "shape": [1],
       "parameters": {"binary_data_size": 6}}], [struct.pack("<I", 5) + b"ab"],
     "BYTES element 0 of 5 bytes runs past the data's end"),
    ([{"name": "s", "datatype": "BYTES", "shape": [1],
       "parameters": {"binary_data_size": 2}}], [b"ab"], "ends inside an element's length"),
    ([{"name": "s", "datatype": "BYTES", "shape": [3],
       "parameters": {"binary_data_size": 5}}], [join_bytes([b"a"])],
     "the shape holds 3 elements, the data 1"),
    ([{"name": "x", "datatype": "FP32", "shape": [1], "data": [1],
       "parameters": {"binary_data_size": 4}}], [b"\0" * 4], 'both "data" and'),
])
def test_a_bad_binary_request_says_what_is_wrong(inputs, chunks, message):
    body, length = _binary_request({"inputs": inputs}, *chunks)
    with pytest.raises(TensorError, match=message.replace("[", r"\[")):
        parse_request(body, length)


def test_results_become_outputs_by_the_documented_rules():
    assert response_outputs([[1.5, 2], [3, 4]]) == [
        {"name": "output__0", "datatype": "FP32", "shape": [2, 2], "data": [1.5, 2, 3, 4]}]
    assert response_outputs({"n": [1, 2], "b": [True], "s": ["a", "b"]}) == [
        {"name": "n", "datatype": "INT64", "shape": [2], "data": [1, 2]},
        {"name": "b", "datatype": "BOOL", "shape": [1], "data": [True]},
        {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]
    assert response_outputs({"outputs": [
        {"name": "y", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}]}) == [
        {"name": "y", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}]
    assert response_outputs(7) == [
        {"name": "output__0", "datatype": "INT64", "shape": [], "data": [7]}]


@pytest.mark.parametrize("result, message", [
    ([[1, 2], [3]], "not rectangular"),
    ([1, "a"], "are not one datatype"),
    ({"outputs": [{"name": "y", "shape": [3], "data": [1, 2]}]}, "holds 3 elements, the data 2"),
    ({"outputs": [{"data": [1]}]}, 'needs a "name" and "data"'),
    ({"outputs": [{"name": "y", "datatype": "F32", "data": [1]}]}, "not a v2 datatype"),
])
def test_a_result_that_is_no_tensor_says_why(result, message):
    with pytest.raises(TensorError, match=message):
        response_outputs(result)


def _request(outputs=None, **parameters):
    body = _json_request({"name": "x", "datatype": "INT8", "shape": [1], "data": [1]},
                         id="r7", parameters=parameters,
                         **({"outputs": outputs} if outputs is not None else {}))
    return parse_request(body, None)


OUTPUTS = [{"name": "y", "datatype": "FP32", "shape": [2], "data": [1.5, 2.0]},
           {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["hé"]}]


def test_the_response_is_json_by_default():
    body, length = encode_response(_request(), OUTPUTS, "m", "2")
    assert length is None
    assert json.loads(body) == {"model_name": "m", "model_version": "2", "id": "r7",
                                "outputs": OUTPUTS}


def test_binary_data_output_makes_every_output_binary():
    body, length = encode_response(_request(binary_data_output=True), OUTPUTS, "m", None)
    header = json.loads(body[:length])
    assert "model_version" not in header
    y, s = header["outputs"]
    assert y["parameters"] == {"binary_data_size": 8} and "data" not in y
    rest = body[length:]
    assert np.frombuffer(rest[:8], "<f4").tolist() == [1.5, 2.0]
    assert rest[8:] == join_bytes(["hé".encode()])
    assert s["parameters"] == {"binary_data_size": len(rest) - 8}


def test_requested_outputs_choose_and_order_the_outputs_and_their_form():
    request = _request(outputs=[{"name": "s"}, {"name": "y", "parameters": {"binary_data": True}}])
    body, length = encode_response(request, OUTPUTS, "m", None)
    header = json.loads(body[:length])
    assert [o["name"] for o in header["outputs"]] == ["s", "y"]
    assert header["outputs"][0]["data"] == ["hé"]
    assert np.frombuffer(body[length:], "<f4").tolist() == [1.5, 2.0]
    with pytest.raises(TensorError, match="no output named 'z'"):
        encode_response(_request(outputs=[{"name": "z"}]), OUTPUTS, "m", None)


def test_an_output_that_does_not_fit_its_datatype_is_an_error():
    with pytest.raises(TensorError, match="does not fit INT8"):
        encode_response(_request(binary_data_output=True),
                        [{"name": "y", "datatype": "INT8", "shape": [1], "data": [300]}],
                        "m", None)
    with pytest.raises(TensorError, match="finite numbers"):
        encode_response(_request(),
                        [{"name": "y", "datatype": "FP32", "shape": [1],
                          "data": [float("nan")]}], "m", None)


def test_infer_response_keeps_each_arrays_datatype():
    result = worker_tensors.infer_response(
        y=np.array([[1.5, 2]], dtype=np.float64), i=np.array([3], dtype=np.int16),
        s=np.array([b"a", "b"], dtype=object), b=np.array([True]))
    # as the worker's codec sends it (JSON), and the front end reads it
    outputs = response_outputs(json.loads(json.dumps(result, default=lambda a: a.tolist())))
    assert [(o["name"], o["datatype"], o["shape"], o["data"]) for o in outputs] == [
        ("y", "FP64", [1, 2], [1.5, 2.0]), ("i", "INT16", [1], [3]),
        ("s", "BYTES", [2], ["a", "b"]), ("b", "BOOL", [1], [True])]
    with pytest.raises(TypeError, match="complex128 has no v2 datatype"):
        worker_tensors.infer_response(c=np.array([1j]))


def test_a_body_that_is_not_packed_tensors_reaches_the_handler_raw():
    assert decode_body(TENSORS_TYPE, b"\xc1garbage") == bytearray(b"\xc1garbage")
    bad = msgpack.packb({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3],
                                     "data": b"\0" * 4}]})
    assert decode_body(TENSORS_TYPE, bad) == bytearray(bad)
