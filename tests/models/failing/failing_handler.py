"""Raises ValueError when any body of the batch contains "fail"; otherwise echoes."""

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
    return bodies
