"""Request bodies in, results out: the codec of TorchServe's Python backend.

In: a request body becomes the value a handler finds under `data[i]["body"]`: the decoded
JSON for content types containing `application/json`, a `str` for `text/*`, and a
`bytearray` for anything else. A body that fails to decode is passed on as a `bytearray`
(TorchServe logs a warning and does the same).

Out: each result becomes a body and a default content type: bytes-like values go raw
(application/octet-stream), `str` as UTF-8 (text/plain), a torch tensor through `torch.save`,
anything else as JSON (application/json), indented by 2 like TorchServe's responses.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)

#: TorchServe answers JSON results as json.dumps(value, indent=2); so do we.
JSON_INDENT = 2

OCTET_STREAM = "application/octet-stream"
TEXT_PLAIN = "text/plain"
APPLICATION_JSON = "application/json"


def decode_body(content_type: str, body: Any) -> Any:
    """Decode one request body (bytes, a zmq.Frame or any buffer) as TorchServe would."""
    kind = content_type.lower()
    if "application/json" in kind:
        try:
            return json.loads(bytes(body))
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, deep nesting
            log.warning("request body is not valid JSON; passing the raw bytes on")
    elif kind.startswith("text"):
        try:
            return str(body, "utf-8")
        except UnicodeDecodeError:
            log.warning("request body is not valid UTF-8; passing the raw bytes on")
    return bytearray(body)


def encode_value(value: Any) -> tuple[Any, str]:
    """(body, default content type) for one handler result; TypeError if unserializable."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return value, OCTET_STREAM
    if isinstance(value, str):
        return value.encode("utf-8"), TEXT_PLAIN
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        return buffer.getvalue(), OCTET_STREAM
    return json.dumps(value, indent=JSON_INDENT, default=_json_default).encode("utf-8"), \
        APPLICATION_JSON


def _json_default(value: Any) -> Any:
    """numpy arrays and scalars (anything with tolist) serialize as their Python values."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
