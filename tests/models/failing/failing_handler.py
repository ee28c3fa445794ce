"""Raises ValueError when any body of the batch contains "fail"; otherwise echoes.

Each echoed reply carries the size of the batch it was answered in, as `x-batch-size`.
"""

import json


def _contains_fail(body):
    if isinstance(body, (bytes, bytearray)):
        return b"fail" in body
    if not isinstance(body, str):
        body = json.dumps(body)
    return "fail" in body


def handle(data, context):
    if data is None:
        return None
    bodies = [row.get("body") for row in data]
    if any(_contains_fail(body) for body in bodies):
        raise ValueError("asked to fail")
    for index in range(len(data)):
        context.set_response_header(index, "x-batch-size", str(len(data)))
    return bodies
