"""The Open Inference Protocol's tensors in the front end: an infer request's body checked and
packed for the worker, and a handler's result turned into the v2 response.

In: a v2 infer request is JSON (`{"id", "parameters", "inputs": [{"name", "shape",
"datatype", "data", "parameters"}], "outputs": [{"name", "parameters"}]}`), or with the binary
tensor data extension the first `Inference-Header-Content-Length` bytes are that JSON and the
rest is each input that has `parameters.binary_data_size`, in order: raw little-endian
elements, or for BYTES each element as a 4-byte little-endian length and its bytes. Each input
is checked (a known datatype, a shape of non-negative integers, as many elements as the shape
holds, the data's size for binary inputs) and becomes raw little-endian bytes (BYTES: a list of
bytes); anything wrong raises TensorError (ValueError: the API answers 400) with what and
where. The request goes to the worker as ONE msgpack body of content type TENSORS_TYPE, which
worker/tensors.py turns into numpy arrays for the handler.

Out: the worker answers what the handler returned as JSON (worker/codec.py: numpy arrays as
nested lists). `response_outputs` reads it as v2 outputs: `{"outputs": [{"name", "data",
"datatype"?, "shape"?}]}`, or a dict of output names to values, or any other value as the one
output "output__0". Where no datatype is given it is inferred from the values: all bools BOOL,
all integers INT64, numbers with a float FP32, all strings BYTES; the shape is the nesting of
the lists. `encode_response` writes the v2 response, each output as JSON data or, where the
request asked (`binary_data` on a requested output, or the request's `binary_data_output`), as
binary data after the JSON header (`Inference-Header-Content-Length`).

No numpy here: struct packs and unpacks the elements.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import msgpack

#: what the worker is sent, and decodes into tensors (worker/tensors.py says the same)
TENSORS_TYPE = "application/x-zerobatch-tensors"
#: the output a handler's result is named when it names none
DEFAULT_OUTPUT = "output__0"
#: v2 datatypes and their struct format characters (little-endian); BYTES has none
FORMATS = {
    "BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q",
    "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q",
    "FP16": "e", "FP32": "f", "FP64": "d",
}
BYTES = "BYTES"
DATATYPES = frozenset(FORMATS) | {BYTES}
#: the most dimensions an input may have (numpy's own limit)
MAX_DIMS = 32
#: the largest product of a shape's non-zero dimensions: an empty tensor of shape
#: [0, 2**40, 2**40] holds no data, but numpy (in the worker) cannot make its array
MAX_SHAPE_PRODUCT = 2**48
#: the most nested lists an empty tensor may stand for: one of shape [a, b, 0, ...] holds no
#: data, yet a handler that answers it (an echo) has it written as a * b empty JSON lists, so
#: the dimensions before its first 0 are bounded as a full request bounds a tensor's elements
MAX_EMPTY_OUTER = 2**20
_LENGTH = struct.Struct("<I")


class TensorError(ValueError):
    """A request (or a handler's result) that is not valid v2 tensors; the message says why."""


class InferRequest:
    """A checked infer request: the body for the worker, and what the response must hold."""

    __slots__ = ("request_id", "body", "outputs", "binary_output")

    def __init__(self, request_id: str | None, body: bytes, outputs: dict[str, bool] | None,
                 binary_output: bool) -> None:
        #: the request's "id", echoed in the response
        self.request_id = request_id
        #: the msgpack body for the worker (TENSORS_TYPE)
        self.body = body
        #: the requested outputs, name -> binary, in order; None: every output
        self.outputs = outputs
        #: the request's binary_data_output: every output binary unless it says otherwise
        self.binary_output = binary_output


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Check a v2 infer request (see the module docstring); TensorError when it is not valid."""
    if header_length is None:
        header, binary = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise TensorError(f"Inference-Header-Content-Length {header_length[:32]!r} is not "
                              f"a length from 0 to the body's {len(body)} bytes")
        header, binary = body[:length], memoryview(body)[length:]
    try:
        request = json.loads(header)
    except (ValueError, RecursionError) as exc:
        raise TensorError(f"the request's JSON is not valid: {exc}") from None
    if not isinstance(request, dict):
        raise TensorError("the request must be a JSON object")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError('"id" must be a string')
    parameters = _parameters(request.get("parameters"), "the request")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise TensorError('"inputs" must be a non-empty list of tensors')
    offset = 0
    packed = []
    for index, tensor in enumerate(inputs):
        entry, offset = check_input(tensor, index, binary, offset)
        packed.append(entry)
    if offset != len(binary):
        raise TensorError(f"the body holds {len(binary) - offset} bytes after the last binary "
                          "input")
    outputs = _requested_outputs(request.get("outputs"))
    return infer_request(request_id, parameters, packed, outputs,
                         parameters.get("binary_data_output") is True)


def infer_request(request_id: str | None, parameters: dict, inputs: list[dict],
                  outputs: dict[str, bool] | None, binary_output: bool) -> InferRequest:
    """An InferRequest of checked inputs (check_input's), its worker body packed: what the
    HTTP routes and the gRPC service (api/grpc_service.py) both send."""
    worker_body = msgpack.packb({
        "id": request_id, "parameters": parameters, "inputs": inputs,
        "outputs": [{"name": name} for name in outputs] if outputs is not None else None,
    }, use_bin_type=True)
    return InferRequest(request_id, worker_body, outputs, binary_output)


def _parameters(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TensorError(f'"parameters" of {where} must be an object')
    return value


def check_input(tensor: Any, index: int, binary: Any, offset: int) -> tuple[dict, int]:
    """One input (JSON-shaped: name, datatype, shape, parameters, and data or
    parameters.binary_data_size of `binary` from `offset`) checked and packed for the worker,
    and the binary section's offset after it."""
    if not isinstance(tensor, dict):
        raise TensorError(f"input {index} must be an object")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise TensorError(f'input {index} needs a "name" (a non-empty string)')
    where = f"input {name!r}"
    datatype = tensor.get("datatype")
    if type(datatype) is not str or datatype not in DATATYPES:
        raise TensorError(f"{where}: datatype {datatype!r} is not one of "
                          f"{', '.join(sorted(DATATYPES))}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(dim) is int and dim >= 0 for dim in shape)):
        raise TensorError(f'{where}: "shape" must be a list of at most {MAX_DIMS} '
                          "non-negative integers")
    if math.prod(dim or 1 for dim in shape) > MAX_SHAPE_PRODUCT:
        raise TensorError(f"{where}: shape {shape} is larger than any tensor can be")
    count = math.prod(shape)
    if count == 0 and math.prod(shape[:shape.index(0)]) > MAX_EMPTY_OUTER:
        raise TensorError(f"{where}: an empty tensor of shape {shape} stands for more than "
                          f"{MAX_EMPTY_OUTER} empty rows before its first 0")
    parameters = dict(_parameters(tensor.get("parameters"), where))
    size = parameters.pop("binary_data_size", None)
    if size is not None:
        if type(size) is not int or size < 0:
            raise TensorError(f"{where}: binary_data_size must be a non-negative integer")
        if "data" in tensor:
            raise TensorError(f'{where} has both "data" and binary_data_size')
        if offset + size > len(binary):
            raise TensorError(f"{where}: binary_data_size {size} runs past the body's end "
                              f"({len(binary) - offset} bytes left)")
        raw = binary[offset:offset + size]
        offset += size
        if datatype == BYTES:
            data: Any = split_bytes(raw, count, where)
        else:
            expected = count * struct.calcsize(FORMATS[datatype])
            if size != expected:
                raise TensorError(f"{where}: shape {shape} of {datatype} takes {expected} "
                                  f"bytes, binary_data_size is {size}")
            data = bytes(raw)
    else:
        if "data" not in tensor:
            raise TensorError(f'{where} has neither "data" nor binary_data_size')
        data = pack_json(tensor["data"], datatype, count, where)
    return {"name": name, "datatype": datatype, "shape": shape, "data": data,
            "parameters": parameters}, offset


def _requested_outputs(outputs: Any) -> dict[str, bool] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise TensorError('"outputs" must be a list')
    requested: dict[str, bool] = {}
    for index, output in enumerate(outputs):
        name = output.get("name") if isinstance(output, dict) else None
        if not isinstance(name, str) or not name:
            raise TensorError(f'output {index} needs a "name" (a non-empty string)')
        parameters = _parameters(output.get("parameters"), f"output {name!r}")
        requested[name] = parameters.get("binary_data") is True
    return requested


def split_bytes(raw: Any, count: int, where: str) -> list[bytes]:
    """The elements of a binary BYTES tensor (4-byte little-endian length, then the bytes)."""
    elements = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise TensorError(f"{where}: BYTES data ends inside an element's length")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise TensorError(f"{where}: BYTES element {len(elements)} of {length} bytes runs "
                              "past the data's end")
        elements.append(bytes(raw[offset:offset + length]))
        offset += length
    if len(elements) != count:
        raise TensorError(f"{where}: the shape holds {count} elements, the data {len(elements)}")
    return elements


def join_bytes(elements: list[bytes]) -> bytes:
    """The binary form of BYTES elements (the inverse of split_bytes)."""
    return b"".join(_LENGTH.pack(len(element)) + element for element in elements)


def flatten(data: Any) -> list:
    """The elements of nested lists, row-major."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def pack_json(data: Any, datatype: str, count: int, where: str) -> Any:
    """JSON data (flat or nested lists) as raw little-endian bytes, or BYTES as a list of
    bytes; TensorError when the count or an element's type does not fit."""
    flat = flatten(data)
    if len(flat) != count:
        raise TensorError(f"{where}: the shape holds {count} elements, the data {len(flat)}")
    if datatype == BYTES:
        if not all(type(element) is str for element in flat):
            raise TensorError(f"{where}: BYTES data must be strings")
        return [element.encode() for element in flat]
    if datatype == "BOOL":
        if not all(type(element) is bool for element in flat):
            raise TensorError(f"{where}: BOOL data must be true or false")
    elif not all(type(element) is int or type(element) is float for element in flat):
        raise TensorError(f"{where}: {datatype} data must be numbers")
    try:
        return struct.pack(f"<{count}{FORMATS[datatype]}", *flat)
    except (struct.error, OverflowError) as exc:
        raise TensorError(f"{where}: data does not fit {datatype}: {exc}") from None


# ------------------------------------------------------------------ the response


def handler_result(content_type: str | None, body: bytes) -> Any:
    """The decoded result of a worker's answer to a v2 request (JSON); TensorError (or
    ValueError for bad JSON) when it is not one."""
    if "json" not in (content_type or "application/json"):
        raise TensorError("the handler's result for a v2 request must be JSON (numpy arrays, "
                          f"lists, numbers, strings or dicts of them), not {content_type}")
    return json.loads(body)


def response_outputs(result: Any) -> list[dict]:
    """A handler's result (decoded JSON) as v2 outputs, each {"name", "datatype", "shape",
    "data": flat list}; TensorError when it cannot be (the rules: the module docstring)."""
    if isinstance(result, dict) and isinstance(result.get("outputs"), list):
        entries = []
        for index, output in enumerate(result["outputs"]):
            if not isinstance(output, dict) or not isinstance(output.get("name"), str) \
                    or "data" not in output:
                raise TensorError(f'output {index} of the result needs a "name" and "data"')
            entries.append((output["name"], output["data"], output.get("datatype"),
                            output.get("shape")))
    elif isinstance(result, dict) and result:
        entries = [(str(name), value, None, None) for name, value in result.items()]
    else:
        entries = [(DEFAULT_OUTPUT, result, None, None)]
    return [_output(*entry) for entry in entries]


def _output(name: str, data: Any, datatype: Any, shape: Any) -> dict:
    where = f"output {name!r}"
    flat = flatten(data)
    if shape is None:
        shape = _nested_shape(data, where)
    elif not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise TensorError(f'{where}: "shape" must be a list of non-negative integers')
    if math.prod(shape) != len(flat):
        raise TensorError(f"{where}: shape {shape} holds {math.prod(shape)} elements, the "
                          f"data {len(flat)}")
    if datatype is None:
        datatype = _infer_datatype(flat, where)
    elif type(datatype) is not str or datatype not in DATATYPES:
        raise TensorError(f"{where}: datatype {datatype!r} is not a v2 datatype")
    return {"name": name, "datatype": datatype, "shape": shape, "data": flat}


def _nested_shape(data: Any, where: str) -> list[int]:
    shape = []
    level = data
    while isinstance(level, list):
        shape.append(len(level))
        if not level:
            break
        level = level[0]
    if len(flatten(data)) != math.prod(shape):
        raise TensorError(f"{where}: the nested lists are not rectangular")
    return shape


def _infer_datatype(flat: list, where: str) -> str:
    kinds = {type(element) for element in flat}
    if not kinds or kinds <= {float, int}:
        return "FP32" if float in kinds else "INT64"
    if kinds == {bool}:
        return "BOOL"
    if kinds == {str}:
        return BYTES
    raise TensorError(f"{where}: values of types {sorted(k.__name__ for k in kinds)} are not "
                      "one datatype")


def select_outputs(request: InferRequest, outputs: list[dict]) -> list[dict]:
    """The outputs the request named, in its order (all when it named none); TensorError when
    the handler gave no output of a requested name."""
    requested = request.outputs
    if requested is None:
        return outputs
    by_name = {output["name"]: output for output in outputs}
    missing = [name for name in requested if name not in by_name]
    if missing:
        raise TensorError(f"the model gave no output named {', '.join(map(repr, missing))}")
    return [by_name[name] for name in requested]


def encode_response(request: InferRequest, outputs: list[dict], model_name: str,
                    model_version: str | None) -> tuple[bytes, int | None]:
    """(body, JSON header length or None) of the v2 response; TensorError when an output's
    data does not fit its datatype or a requested output is missing."""
    requested = request.outputs
    outputs = select_outputs(request, outputs)
    response: dict[str, Any] = {"model_name": model_name}
    if model_version:
        response["model_version"] = model_version
    if request.request_id is not None:
        response["id"] = request.request_id
    chunks = []
    entries = []
    for output in outputs:
        name, datatype, data = output["name"], output["datatype"], output["data"]
        entry = {"name": name, "datatype": datatype, "shape": output["shape"]}
        binary = request.binary_output if requested is None else (
            requested[name] or request.binary_output)
        if binary:
            raw = pack_output(data, datatype, name)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_output(data, datatype, name)
        entries.append(entry)
    response["outputs"] = entries
    header = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def pack_output(data: list, datatype: str, name: str) -> bytes:
    """An output's flat data as raw little-endian bytes (BYTES: length-prefixed elements)."""
    if datatype == BYTES:
        return join_bytes([element.encode() if isinstance(element, str) else bytes(element)
                           for element in data])
    try:
        return struct.pack(f"<{len(data)}{FORMATS[datatype]}", *data)
    except (struct.error, OverflowError, TypeError) as exc:
        raise TensorError(f"output {name!r}: data does not fit {datatype}: {exc}") from None


def _json_output(data: list, datatype: str, name: str) -> list:
    if datatype == BYTES:
        if not all(isinstance(element, str) for element in data):
            raise TensorError(f"output {name!r}: BYTES data must be strings in JSON")
        return data
    if datatype in ("FP16", "FP32", "FP64"):
        if not all(type(element) in (int, float) and not math.isinf(element)
                   and not math.isnan(element) for element in data):
            raise TensorError(f"output {name!r}: {datatype} data must be finite numbers in "
                              "JSON; ask for it as binary data")
    return data
