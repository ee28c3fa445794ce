"""Fuzz target: what a worker decodes of a client's request, through its `Service`.

The worker reads a BATCH message (`protocol.parse_batch`), each request's meta
(`protocol.parse_meta`) and body: a form body split by worker.forms (multipart/form-data,
application/x-www-form-urlencoded), any other body decoded by worker.codec (JSON, text,
bytes). An input is one of two kinds (its first byte, odd or even, says which):

- odd: a whole message as the broker's socket delivers it (count byte, then frames; see
  `decode_frames`), given to the worker loop's steps: parse_batch, then run_batch;
- even: requests as (content type, body) pairs, each record a u16 LE length and the
  content type's UTF-8 text, then a u16 LE length and the body (`decode_pairs`): the
  content type reaches the forms parser whatever it holds.

What must hold: parse_batch raises nothing but ProtocolError; `Service.run_batch` never
raises (a malformed meta or form answers that one request `bad_request`, the rest of the
batch runs) and answers every request, in order, with a well-formed REPLY or ERROR; the
handler here echoes what it was given, so a REPLY body says which fields it saw.
"""

from __future__ import annotations

import json
from typing import Any

from tests.fuzz import _harness

with _harness.instrumented("zerobatch"):
    from zerobatch import protocol as p
    from zerobatch.errors import BadRequest, ProtocolError
    from zerobatch.worker.context import Context
    from zerobatch.worker.service import Service

BATCH_ID = 7
#: requests in one fuzzed batch, at most
MAX_PAIRS = 64


def echo_fields(data: list[dict[str, Any]], context: Context) -> list[dict[str, str]]:
    """The handler: for each request, its field names and the type each decoded to."""
    results = []
    for index, row in enumerate(data):
        context.get_request_header(index, "content-type")
        context.get_all_request_header(index)
        results.append({str(name): type(value).__name__ for name, value in row.items()})
    return results


def make_service() -> Service:
    context = Context("fuzz", "/nowhere", {"model": {"handler": "echo"}}, 8, None)
    return Service(echo_fields, context)


def decode_frames(data: bytes) -> list[bytes]:
    """A message: a count byte (mod 32), then that many frames (u16 LE length, bytes)."""
    return _harness.take_frames(data, 1, data[0] % 32)[0] if data else []


def decode_pairs(data: bytes) -> list[tuple[str, bytes]]:
    """(content type, body) records after the first byte: a u16 LE length and the content
    type's UTF-8 text (invalid bytes replaced), a u16 LE length and the body; at most
    MAX_PAIRS."""
    pairs = []
    at = 1
    while len(pairs) < MAX_PAIRS:
        frames, at = _harness.take_frames(data, at, 2)
        if not frames:
            break
        content_type = frames[0].decode("utf-8", "replace")
        pairs.append((content_type, frames[1] if len(frames) > 1 else b""))
    return pairs


def encode_pairs(pairs: list[tuple[str, bytes]]) -> bytes:
    return b"\x00" + b"".join(_harness.put_frames((content_type.encode(), body))
                              for content_type, body in pairs)


def run_message(service: Service, frames: list) -> list[tuple] | None:
    """What the worker loop does with one message: None when it drops it."""
    try:
        batch_id, items, sizes = p.parse_batch(frames)
    except ProtocolError:
        return None
    return check_reply(service.run_batch(batch_id, items, sizes), batch_id, len(items))


def check_reply(frames: list, batch_id: int, count: int) -> list[tuple]:
    """The W_REPLY answers every request with a well-formed REPLY or ERROR; returns them as
    ("reply", (status, content_type, headers), body) or ("error", (code, ...), b"")."""
    assert frames[:2] == [p.VERSION, p.W_REPLY]
    got_batch_id, items = p.split_worker_reply(frames)
    assert got_batch_id == batch_id and len(items) == 2 * count
    answers = []
    for index in range(0, len(items), 2):
        answer = bytes(items[index])
        if answer[:1] == p.REPLY:
            answers.append(("reply", p.parse_reply_meta(answer[1:]), bytes(items[index + 1])))
        else:
            assert answer[:1] == p.ERROR, answer[:1]
            info = p.parse_error_info(answer[1:])
            assert info[0] == BadRequest.code, info  # the echo handler never fails
            answers.append(("error", info, b""))
    return answers


def run_pairs(service: Service, pairs: list[tuple[str, bytes]]) -> list[tuple]:
    items = []
    for content_type, body in pairs:
        try:
            meta = p.encode_meta(content_type, {"x-fuzz": "1"}, None)
        except TypeError:  # a str msgpack cannot pack: no client can send it
            continue
        items.append((meta, body))
    if not items:
        return []
    answers = check_reply(service.run_batch(BATCH_ID, items), BATCH_ID, len(items))
    for kind, _meta, body in answers:
        if kind == "reply":
            assert isinstance(json.loads(body), dict)
    return answers


def test_one_input(data: bytes) -> None:
    if not data:
        return
    service = make_service()
    if data[0] & 1:
        run_message(service, decode_frames(data))
    else:
        run_pairs(service, decode_pairs(data))


def seeds() -> list[bytes]:
    boundary = "------------------------d74496d66958873e"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; "
            f"filename=\"a.json\"\r\nContent-Type: application/json\r\n\r\n"
            f"{{\"a\": [1, 2]}}\r\n--{boundary}\r\nContent-Disposition: form-data; "
            f"name=\"note\"\r\n\r\nhello\r\n--{boundary}--\r\n").encode()
    meta = p.encode_meta("text/plain", {"x-a": "b"}, "id-1")
    return [
        encode_pairs([(f"multipart/form-data; boundary={boundary}", form)]),
        encode_pairs([('multipart/form-data; boundary="x;y"', b"pre\r\n--x;y\r\n\r\nv\r\n"
                                                              b"--x;y--")]),
        encode_pairs([("application/x-www-form-urlencoded", b"a=1&b=h%C3%A9+x&c=&a=2"),
                      ("application/json", b'{"k": [1, {"n": null}]}'),
                      ("text/plain; charset=utf-8", "h\u00e9".encode())]),
        b"\x05" + _harness.put_frames([p.VERSION, p.W_BATCH, p.encode_batch_id(3), meta, b"x"]),
        b"\x09" + _harness.put_frames([p.VERSION, p.W_BATCHES, p.encode_batch_id(4),
                                      p.encode_batch_sizes([1, 2]), meta, b"a", meta, b"b",
                                      p.encode_meta("application/json"), b"[1]"]),
    ]


if __name__ == "__main__":
    _harness.run("worker_requests", test_one_input, seeds())
