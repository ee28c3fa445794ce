"""A handler that fails or answers in each way the parity tests compare with TorchServe.

The request header `x-case` picks the behaviour (batch size 1: one request a call); without
one, the handler echoes the request's row. Shared by the recorder
(tests/torchserve/record_errors.py) and the tests (tests/integration/test_torchserve_answers.py),
which pack it with the real torch-model-archiver.
"""

import base64
import io
import time

from ts.handler_utils.utils import send_intermediate_predict_response
from ts.utils.util import PredictionException


def _value(value):
    return bytes(value) if isinstance(value, (bytes, bytearray)) else value


def handle(data, context):
    if data is None:  # TorchServe's load-time call
        return None
    case = context.get_request_header(0, "x-case")
    if case == "raise":
        raise ValueError("the handler failed on purpose")
    if case == "memory":
        raise MemoryError("no memory left on purpose")
    if case == "cuda_oom":
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    if case == "cuda_error":
        raise RuntimeError("CUDA error: device-side assert triggered")
    if case == "prediction_exception":
        raise PredictionException("the handler refused this request", 418)
    if case == "prediction_exception_413":
        raise PredictionException("the request is too large for the handler", 413)
    if case == "exit":  # the worker dies mid-request
        import os

        os._exit(1)
    if case == "count":
        return [b"one", b"two"] * len(data)
    if case == "not_list":
        return {"not": "a list"}
    if case == "none":
        return [None] * len(data)
    if case == "unserializable":
        return [object() for _ in data]
    if case == "fields":
        return [repr(sorted((name, _value(value)) for name, value in row.items()))
                for row in data]
    if case == "stream":
        ids = {index: context.get_request_id(index) for index in range(len(data))}
        for step in range(2):
            send_intermediate_predict_response([f"chunk-{step}," for _ in data], ids,
                                               "Intermediate Prediction success", 200, context)
        return ["end" for _ in data]
    if case == "image":  # what ts.torch_handler.vision_handler's preprocess does first
        for row in data:
            image = row.get("data") or row.get("body")
            if isinstance(image, str):
                image = base64.b64decode(image)
            if isinstance(image, (bytearray, bytes)):
                from PIL import Image

                Image.open(io.BytesIO(image))
        return [b"an image" for _ in data]
    if case == "sleep":
        marker = context.get_request_header(0, "x-marker")
        if marker:
            with open(marker, "w"):
                pass
        time.sleep(float(context.get_request_header(0, "x-seconds") or 3))
        return [b"slept" for _ in data]
    return [repr(sorted((name, _value(value)) for name, value in row.items()))
            for row in data]
