"""MLP: one TorchScript forward per batch, the workload where batching pays.

Each body is 12288 float32 (49,152 raw bytes); the batch is stacked into one tensor, run
through `mlp.pt` (12288 -> 1024 -> 1024 -> 10) once under inference_mode, and each row gets
its 10 softmax probabilities as a list of floats. Shared by all servers: no `ts` imports."""

import os
import warnings

import torch

IN_FEATURES = 12288
BODY_BYTES = IN_FEATURES * 4
DEFAULT_SERIALIZED_FILE = "mlp.pt"

_model = None


def _load(context):
    manifest_model = (context.manifest or {}).get("model", {})
    name = manifest_model.get("serializedFile") or DEFAULT_SERIALIZED_FILE
    path = os.path.join(context.system_properties["model_dir"], name)
    with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit.*; the format is fine
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(path, map_location="cpu")
    return model.eval()


def _body(row):
    body = row["body"] if row.get("body") is not None else row.get("data")
    if not isinstance(body, (bytes, bytearray, memoryview)) or len(body) != BODY_BYTES:
        size = len(body) if hasattr(body, "__len__") else type(body).__name__
        raise ValueError(f"mlp takes {BODY_BYTES} raw bytes (float32 x {IN_FEATURES}) per "
                         f"request as application/octet-stream, got {size}")
    return body


def handle(data, context):
    global _model
    if _model is None:  # at init (data is None), or lazily if a server skipped that call
        _model = _load(context)
    if data is None:
        return None
    # one copy into a writable buffer (torch.frombuffer warns on read-only bytes)
    joined = bytearray().join(_body(row) for row in data)
    batch = torch.frombuffer(joined, dtype=torch.float32).view(len(data), IN_FEATURES)
    with torch.inference_mode():
        probabilities = torch.softmax(_model(batch), dim=1)
    return probabilities.tolist()
