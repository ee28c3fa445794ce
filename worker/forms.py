"""Form bodies, split into fields as TorchServe's front end splits them.

TorchServe hands its handler one dict per request. A raw body goes under "body"; a
`multipart/form-data` or `application/x-www-form-urlencoded` body is split by its front end
(Netty's HttpPostRequestDecoder) into fields, and each field becomes a key of that dict:
`curl -F data=@kitten.jpg` reaches the handler as {"data": bytearray(...)}, which is what
TorchServe's own handlers read first (`row.get("data") or row.get("body")`). The values are
decoded as TorchServe's Python worker decodes its parameters:

- a file part (one with a filename) by its Content-Type, like a raw body (worker.codec):
  JSON parsed, text/* as a str, anything else a bytearray; a file part without a
  Content-Type counts as application/octet-stream;
- a plain field (a part without a filename, and every url-encoded field) as a bytearray of
  its value: Netty hands those on without a content type;
- a name given twice keeps its last value, as in TorchServe's dict update;
- a url-encoded body's last field without a `=` is no field (`curl -d x` sends none, `x&`
  and `x=` one named x with an empty value), as Netty's decoder drops it.

`decode_form` also returns each field's content type (a file part's media type without its
parameters, "" for plain fields), for the request's headers: TorchServe's
`context.get_request_header(i, name)` answers {"content-type": ...} for each field. A
multipart/form-data Content-Type without a boundary is not a form to Netty either: such a
body goes under "body". Checked against TorchServe 0.12.0 with curl.

One difference, on purpose: a body that is not the well-formed form it claims to be, or
holds more than MAX_FIELDS fields, raises FormError, which answers that request 400 with
what is wrong (the rest of its batch runs), where TorchServe hands the handler an empty
dict, or answers 500 for a part without a name.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from zerobatch.worker.codec import OCTET_STREAM, decode_body

__all__ = ["MULTIPART", "URLENCODED", "FormError", "decode_form"]

MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"
#: RFC 2046: a boundary is 1 to 70 characters
MAX_BOUNDARY = 70
#: Fields one form may hold (Django's default too). A 6.5 MB body of "a&a&..." would
#: otherwise become three million objects, hundreds of MB, in the worker.
MAX_FIELDS = 1000

_CRLF = b"\r\n"
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_ESCAPED = re.compile(r"\\(.)")


class FormError(ValueError):
    """The body does not parse as the form its Content-Type names."""


def decode_form(content_type: str, body: Any) -> tuple[dict[str, Any], dict[str, str]] | None:
    """(field values, field content types) of a form body; None if content_type names no
    form (the body is then a raw body); FormError if the body is not the form it claims."""
    mime, params = _parse_header_value(content_type)
    if mime == URLENCODED:
        fields = _urlencoded_fields(body)
    elif mime == MULTIPART and "boundary" in params:  # without one, Netty reads a raw body
        fields = _multipart_fields(bytes(body), params["boundary"])
    else:
        return None
    values: dict[str, Any] = {}
    content_types: dict[str, str] = {}
    for name, value, field_type in fields:
        values[name] = value
        content_types[name] = field_type
    return values, content_types


def _urlencoded_fields(body: Any) -> list[tuple[str, bytearray, str]]:
    raw = bytes(body)
    if raw.count(b"&") >= MAX_FIELDS:
        raise FormError(f"the form has more than {MAX_FIELDS} fields")
    try:
        pairs = urllib.parse.parse_qsl(raw.decode("ascii"), keep_blank_values=True,
                                       encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormError(f"the url-encoded form body is malformed: {exc}") from None
    last = raw.rpartition(b"&")[2]
    if pairs and last and b"=" not in last:  # Netty reads no field from it
        pairs.pop()
    return [(name, bytearray(value.encode("utf-8")), "") for name, value in pairs]


def _multipart_fields(body: bytes, boundary: str) -> list[tuple[str, Any, str]]:
    """Split a multipart/form-data body (RFC 7578, RFC 2046) into (name, value, type)."""
    if not 1 <= len(boundary) <= MAX_BOUNDARY:
        raise FormError("a multipart/form-data body needs a boundary parameter of 1 to "
                        f"{MAX_BOUNDARY} characters in its Content-Type")
    try:
        delimiter = b"--" + boundary.encode("latin-1")
    except UnicodeEncodeError:  # a client's Content-Type is any text; Netty's is ISO-8859-1
        raise FormError("the boundary of a multipart/form-data body must be ISO-8859-1 "
                        "text") from None
    if body.startswith(delimiter):
        position = len(delimiter)
    else:  # after a preamble
        start = body.find(_CRLF + delimiter)
        if start < 0:
            raise FormError("the multipart body has no part that begins with its boundary")
        position = start + 2 + len(delimiter)
    next_delimiter = _CRLF + delimiter
    fields = []
    while not body.startswith(b"--", position):  # "--" after a delimiter closes the body
        line_end = body.find(_CRLF, position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise FormError("a boundary line of the multipart body is malformed")
        if body.startswith(_CRLF, line_end + 2):  # a part without headers
            head, content_start = b"", line_end + 4
        else:
            head_end = body.find(b"\r\n\r\n", line_end + 2)
            if head_end < 0:
                raise FormError("a part of the multipart body has no end to its headers")
            head, content_start = body[line_end + 2:head_end], head_end + 4
        content_end = body.find(next_delimiter, content_start)
        if content_end < 0:
            raise FormError("the multipart body ends before its closing boundary")
        if len(fields) == MAX_FIELDS:
            raise FormError(f"the form has more than {MAX_FIELDS} fields")
        fields.append(_field(head, body[content_start:content_end]))
        position = content_end + len(next_delimiter)
    return fields


def _field(head: bytes, content: bytes) -> tuple[str, Any, str]:
    """One part's (name, value, content type), decoded as the module docstring says."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    headers = {}
    for line in text.split("\r\n") if text else ():
        name, colon, value = line.partition(":")
        if not colon:
            raise FormError(f"a part of the multipart body has a malformed header: {line!r}")
        headers[name.strip().lower()] = value.strip()
    disposition, params = _parse_header_value(headers.get("content-disposition", ""))
    if disposition != "form-data" or not params.get("name"):
        raise FormError("each part of a multipart/form-data body needs a "
                        "Content-Disposition of form-data with a name")
    if "filename" not in params:
        return params["name"], bytearray(content), ""
    # the part's media type without its parameters, as Netty hands it on (the charset apart)
    content_type = headers.get("content-type", "").partition(";")[0].strip() or OCTET_STREAM
    return params["name"], decode_body(content_type, content), content_type


def _parse_header_value(value: str) -> tuple[str, dict[str, str]]:
    """'form-data; name="a"' -> ("form-data", {"name": "a"}); names lowercased, quotes and
    backslash escapes removed."""
    main, _, rest = value.partition(";")
    params = {}
    for match in _PARAM.finditer(";" + rest):
        raw = match.group(2).strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = _ESCAPED.sub(r"\1", raw[1:-1])
        params[match.group(1).lower()] = raw
    return main.strip().lower(), params
