"""Open Inference Protocol (KServe v2) requests in the worker: the front end's packed tensors
(application/x-zerobatch-tensors, made by api/tensors.py) as numpy arrays for the handler.

A v2 infer request reaches the handler as `data[i]["body"]`, a dict shaped like the v2
request: `{"id": str or None, "parameters": {...}, "inputs": [{"name", "datatype", "shape",
"parameters", "data"}], "outputs": [{"name"}] or None}`, where each input's "data" is a numpy
array of its datatype (BOOL bool, UINT8..INT64, FP16/32/64 float16/32/64) reshaped to its
shape, and for BYTES a numpy object array of bytes. The arrays are the handler's own
(writable copies). `inputs_by_name(body)` gives name -> array.

The handler's result for such a request is encoded as any result is (worker/codec.py): JSON,
numpy arrays as nested lists. The front end reads it as v2 outputs (api/tensors.py): a
`{"outputs": [{"name", "data", "datatype"?, "shape"?}]}` dict, a dict of output names to
values, or one value, answered as the output "output__0"; without a datatype, integers are
INT64, floats FP32, bools BOOL and strings BYTES. So `return [{"outputs": [{"name": "y",
"datatype": "FP64", "data": y}]}]` keeps an FP64 output's type, and BYTES outputs are str.
`infer_response(y=array, ...)` builds that dict from numpy arrays, each with the datatype of
its dtype (object or string arrays: BYTES, bytes decoded as UTF-8).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

#: the content type of a packed v2 request (api/tensors.py's TENSORS_TYPE)
TENSORS_TYPE = "application/x-zerobatch-tensors"
#: v2 datatypes as little-endian numpy dtypes
DTYPES = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
#: numpy dtype kind and size -> v2 datatype
_DATATYPES = {(dtype.kind, dtype.itemsize): name for name, dtype in DTYPES.items()}


def decode_tensors(body: Any) -> dict:
    """The handler's view of a packed v2 request; ValueError when the body is not one."""
    try:
        request = msgpack.unpackb(bytes(body), raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on bad bytes
        raise ValueError(f"not a packed v2 request: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ValueError("not a packed v2 request: no inputs")
    try:
        for tensor in request["inputs"]:
            tensor["data"] = _array(tensor)
    except (KeyError, TypeError, ValueError) as exc:  # the front end sends none of these
        raise ValueError(f"not a packed v2 request: {type(exc).__name__}: {exc}") from None
    return request


def _array(tensor: dict) -> np.ndarray:
    datatype, shape, data = tensor["datatype"], tensor["shape"], tensor["data"]
    if datatype == "BYTES":
        array = np.empty(len(data), dtype=object)
        array[:] = data
        return array.reshape(shape)
    return np.frombuffer(data, dtype=DTYPES[datatype]).reshape(shape).copy()


def inputs_by_name(body: dict) -> dict[str, np.ndarray]:
    """name -> array of a decoded v2 request's inputs."""
    return {tensor["name"]: tensor["data"] for tensor in body["inputs"]}


def infer_response(**outputs: Any) -> dict:
    """A handler's result for a v2 request: {"outputs": [...]} with each array's datatype
    (anything numpy takes; object, str and bytes arrays as BYTES). TypeError for a dtype v2
    has no datatype for (complex, datetime...)."""
    entries = []
    for name, value in outputs.items():
        array = np.asarray(value)
        datatype = _DATATYPES.get((array.dtype.kind, array.dtype.itemsize))
        if datatype is not None:
            data: Any = array
        elif array.dtype.kind in "OSU":
            datatype = "BYTES"
            data = [item.decode() if isinstance(item, bytes) else str(item)
                    for item in array.ravel().tolist()]
        else:
            raise TypeError(f"output {name!r}: numpy dtype {array.dtype} has no v2 datatype")
        entries.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                        "data": data})
    return {"outputs": entries}
