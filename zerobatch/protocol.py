"""The zerobatch wire protocol: frame layouts, command bytes, limits, encode and parse.

This is the only module that knows how messages look on a socket; the front ends, the
ZeroMQ client, the broker and the workers all build and read frames through it.

Transport: ZeroMQ multipart messages. Clients and workers use DEALER sockets; the broker
binds two ROUTERs ("front" for clients and HTTP front ends, "back" for workers), which
prepend the peer's identity frame on receive. The layouts below are what the DEALER side
sends and receives (the broker sees one more frame, the identity, in front).

Every message starts with two frames: ``VERSION`` (``b"ZB1"``) and a one-byte command.

Client <-> broker (front ROUTER)::

    REQUEST  [VERSION, REQUEST, head_1, body_1, ..., head_n, body_n]   one or more requests
    CONTROL  [VERSION, CONTROL, rid, control]
    REPLIES  [VERSION, REPLIES, head_1, body_1, ..., head_n, body_n]   one or more answers

    request head  u8 len(rid) | rid | route             (route: u16 LE length, then msgpack)
                  | meta                                (the rest of the frame)
    reply head    u8 len(rid) | rid | cmd | a           cmd is one byte:
                    REPLY    a = reply_meta, body = the answer
                    ERROR    a = error_info, body = b""
                    PARTIAL  a = reply_meta, body = one streamed chunk (the REPLY ends it)

Heads. Every frame costs a send and a receive in each process it crosses, and in Python that
is most of what a small request costs there. So a request's small fields travel in one head
frame next to its body: two frames per request each way, where they were four (rid, route,
meta, body and cmd, rid, a, b). The broker reads the rid and the route out of a head and
forwards the meta to the worker; a reply head is the rid's part of the request head with
the worker's answer head (cmd | a) after it.

Coalescing. Every ZeroMQ message costs a fixed amount of work in each process it crosses (a
send, a receive, a wake-up of libzmq's I/O thread), more than its bytes cost. So a client with
many requests in flight may put the requests it makes in one event-loop turn into one REQUEST
message, and the broker sends what one of its turns has for one client as one REPLIES
message. A message holds at most MAX_BATCH_ITEMS items: past a few hundred, a larger message
saves nothing, and the broker handles a message whole, so its size bounds how long one
client's message can hold the broker's loop (broker/loop.py).

    rid         opaque bytes (at most MAX_RID_BYTES) chosen by the client, echoed verbatim
    route       msgpack [model: str, version: str | None, timeout_ms: int]; 0 = model default.
                The broker decodes only this part of a request.
    meta        msgpack [content_type: str, headers: {str: str} | None, request_id: str | None];
                opaque to the broker, read by the worker (the broker reads and rewrites it
                only for a model with sequence batching: broker.sequences)
    body        the raw request body; never decoded or copied by the broker
    control     msgpack {"op": str, ...}: management calls ("ping", "describe", "stop")
    reply_meta  msgpack [status: int, content_type: str | None, headers: {str: str} | None];
                content_type is the body's (the handler's, else the codec's default); headers
                are those the handler set, its content-type included, as HTTP sends them
    error_info  msgpack [code: str, message: str, status: int] or [..., retry_after_ms: int]
                (codes: zerobatch.errors). retry_after_ms, on deadline_unreachable: how long
                the broker expects to keep refusing requests with that route; a client may
                refuse them itself until then, without a round trip (api.client_helpers)

Worker <-> broker (back ROUTER; the worker's identity is its worker id)::

    READY      [VERSION, W_READY, info]     info = msgpack {"model", "version", "worker_id",
                                                            "gpu_id", "pid"[, "digest"]}
                 digest: the model directory's model_files.model_digest (str); local
                 workers leave it out, a remote worker must send the broker's own
    BATCH      [VERSION, W_BATCH, batch_id, meta_1, body_1, ..., meta_n, body_n]
    BATCHES    [VERSION, W_BATCHES, batch_id, sizes, meta_1, body_1, ..., meta_n, body_n]
                 several batches in one message (see Grouping below); sizes = u32 LE per
                 batch, in order, summing to n; each is a separate handler call
    W_REPLY    [VERSION, W_REPLY, batch_id, answer_1, body_1, ..., answer_n, body_n]
                 answer_i = cmd | a: REPLY | reply_meta (body = the answer) or
                 ERROR | error_info (body = b""); one W_REPLY answers a whole BATCHES
                 message, its requests in order
    W_PARTIAL  [VERSION, W_PARTIAL, batch_id, index, reply_meta, body]
                 one streamed chunk for request `index` (u32 LE, its position in the
                 BATCH or BATCHES message)
                 of a running batch, sent before the batch's W_REPLY; the broker forwards it
                 to that request's client as PARTIAL and keeps the request in flight
    HEARTBEAT  [VERSION, W_HEARTBEAT]        both ways
    DISCONNECT [VERSION, W_DISCONNECT]       worker -> broker, before a clean exit; broker ->
                                            worker, to dismiss one whose model it does not
                                            serve (the worker stops)
    DISCONNECT [VERSION, W_DISCONNECT, why]  broker -> worker, a dismissal with its reason
                                            (UTF-8): a remote worker refused at READY
    LOAD_FAILED [VERSION, W_LOAD_FAILED, info]  info = msgpack {"model", "version",
                                            "worker_id", "error"}: the model did not load;
                                            sent once, then the worker exits

    batch_id   8 bytes, little-endian unsigned; the broker's own counter

Grouping. The same fixed cost per message holds between the broker and a worker: a model
whose batches take microseconds (batch size 1, a cheap handler) would spend more on its
messages than on its work. So when several full batches wait and the model's learned run
time is short, the broker sends them in one BATCHES message; the worker runs them one
handler call each, in order, and answers them all in one W_REPLY. The handler never sees
more than batch_size requests at once; the first batch's answer waits for the others, which
the broker bounds (broker.batching_policy.GROUP_RUN_BUDGET_NS).

A worker sends its heartbeats from a second DEALER whose identity is its worker id plus
HEARTBEAT_SUFFIX, owned by a heartbeat thread, so a long forward pass on the data socket's
thread never silences it. Any message from either identity counts as a heartbeat.

Untrusted frames are parsed defensively: anything malformed raises ProtocolError, which the
receiver logs and drops; it never takes a process down.
"""

from __future__ import annotations

import struct
from typing import Any, Sequence

import msgpack

from zerobatch.errors import ProtocolError

VERSION = b"ZB1"

# Client commands (front ROUTER).
REQUEST = b"\x01"
REPLY = b"\x02"
ERROR = b"\x03"
CONTROL = b"\x04"
PARTIAL = b"\x05"
REPLIES = b"\x06"

# Worker commands (back ROUTER).
W_READY = b"\x11"
W_BATCH = b"\x12"
W_BATCHES = b"\x18"
W_REPLY = b"\x13"
W_HEARTBEAT = b"\x14"
W_DISCONNECT = b"\x15"
W_LOAD_FAILED = b"\x17"
W_PARTIAL = b"\x16"

HEARTBEAT_SUFFIX = b".hb"

# Limits on what a peer may send us.
MAX_RID_BYTES = 64
MAX_HEADER_BYTES = 64 * 1024
MAX_BATCH_ITEMS = 512
DEFAULT_MAX_BODY_BYTES = 6_553_500  # TorchServe's default max_request_size

# Liveness, as in the Paranoid Pirate pattern: a peer silent for LIVENESS intervals is lost.
HEARTBEAT_INTERVAL_MS = 1000
HEARTBEAT_LIVENESS = 3

HEARTBEAT_FRAMES = [VERSION, W_HEARTBEAT]
DISCONNECT_FRAMES = [VERSION, W_DISCONNECT]

_BATCH_ID = struct.Struct("<Q")
_ROUTE_LENGTH = struct.Struct("<H")
_U8 = [bytes((length,)) for length in range(256)]
_PARTIAL_INDEX = struct.Struct("<I")
_BATCH_SIZE = struct.Struct("<I")
_UNPACK_LIMITS = dict(
    raw=False,
    max_str_len=MAX_HEADER_BYTES,
    max_bin_len=MAX_HEADER_BYTES,
    max_array_len=1024,
    max_map_len=1024,
    max_ext_len=0,
)

packb = msgpack.packb


def unpack_header(data: bytes) -> Any:
    """Decode one msgpack header frame within the size limits, or raise ProtocolError."""
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header frame of {len(data)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        return msgpack.unpackb(data, **_UNPACK_LIMITS)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"undecodable header frame: {exc}") from None


def check_envelope(frames: Sequence[bytes], min_frames: int) -> bytes:
    """Check the version frame and length; return the command byte."""
    if len(frames) < min_frames:
        raise ProtocolError(f"message has {len(frames)} frames, expected at least {min_frames}")
    if bytes(frames[0]) != VERSION:
        raise ProtocolError(f"unknown protocol version {bytes(frames[0])[:16]!r}")
    return bytes(frames[1])


# ---------------------------------------------------------------- client side

def encode_route(model: str, version: str | None, timeout_ms: int) -> bytes:
    """The route part of a request head: u16 LE length, then msgpack [model, version,
    timeout_ms]. Clients keep it per route; it also keys their refusal hints."""
    route = packb((model, version, int(timeout_ms)))
    if len(route) > MAX_HEADER_BYTES:
        raise ProtocolError(f"a route of {len(route)} bytes exceeds {MAX_HEADER_BYTES}")
    return _ROUTE_LENGTH.pack(len(route)) + route


def encode_meta(content_type: str, headers: dict[str, str] | None = None,
                request_id: str | None = None) -> bytes:
    try:
        return packb((content_type, headers, request_id))
    except (TypeError, ValueError) as exc:  # msgpack's own words name no argument
        raise TypeError(f"request meta must be strings (content type, headers as a dict of "
                        f"str to str, request id): {exc}") from None


def rid_head(rid: bytes) -> bytes:
    """The rid's part of a head: u8 length, then the rid."""
    if len(rid) > MAX_RID_BYTES:
        raise ProtocolError(f"request id longer than {MAX_RID_BYTES} bytes")
    return _U8[len(rid)] + rid


def encode_request_head(rid: bytes, route: bytes, meta: bytes) -> bytes:
    """A request head from the rid, encode_route()'s route and the meta."""
    return b"".join((rid_head(rid), route, meta))


def encode_request(rid: bytes, route: bytes, meta: bytes, body: Any) -> list:
    return [VERSION, REQUEST, encode_request_head(rid, route, meta), body]


def encode_requests(items: list) -> list[list]:
    """The REQUEST messages that carry items, a flat [head_1, body_1, ..., head_n, body_n]
    (heads from encode_request_head), in order, at most MAX_BATCH_ITEMS requests each (see
    "Coalescing" above)."""
    per_message = 2 * MAX_BATCH_ITEMS
    if len(items) <= per_message:
        return [[VERSION, REQUEST, *items]]
    return [[VERSION, REQUEST, *items[start:start + per_message]]
            for start in range(0, len(items), per_message)]


def request_rid(head: bytes) -> bytes:
    """The rid of a request head (ProtocolError when it has none)."""
    return split_request_head(head)[0][1:]


def split_request_head(head: bytes) -> tuple[bytes, bytes, bytes]:
    """(rid head, route, meta) of a request head; the route is the msgpack part, b"" when
    its length runs past the head (parse_route refuses it, and the rid can be answered).
    ProtocolError when not even the rid can be read."""
    if not head or len(head) < 1 + head[0] or head[0] > MAX_RID_BYTES:
        raise ProtocolError("a request head must start with u8 len(rid) <= "
                            f"{MAX_RID_BYTES} and the rid")
    route_at = 3 + head[0]
    if len(head) < route_at:
        return head[:route_at - 2], b"", b""
    meta_at = route_at + (head[route_at - 2] | head[route_at - 1] << 8)
    if len(head) < meta_at:
        return head[:route_at - 2], b"", b""
    return head[:route_at - 2], head[route_at:meta_at], head[meta_at:]


def encode_control(rid: bytes, op: str, **args: Any) -> list:
    args["op"] = op
    return [VERSION, CONTROL, rid, packb(args)]


def parse_route(data: bytes) -> tuple[str, str | None, int]:
    """Decode a route frame: (model, version or None, timeout_ms >= 0)."""
    route = unpack_header(data)
    if not isinstance(route, list) or len(route) != 3:
        raise ProtocolError("route must be [model, version, timeout_ms]")
    model, version, timeout_ms = route
    if not isinstance(model, str) or not model:
        raise ProtocolError("route model must be a non-empty string")
    if version is not None and not isinstance(version, str):
        raise ProtocolError("route version must be a string or nil")
    if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms < 0:
        raise ProtocolError("route timeout_ms must be a non-negative integer")
    return model, version, timeout_ms


def parse_meta(data: bytes) -> tuple[str, dict[str, str] | None, str | None]:
    """Decode a request meta frame: (content_type, headers or None, request_id or None)."""
    meta = unpack_header(data)
    if not isinstance(meta, list) or len(meta) != 3:
        raise ProtocolError("meta must be [content_type, headers, request_id]")
    content_type, headers, request_id = meta
    if not isinstance(content_type, str):
        raise ProtocolError("meta content_type must be a string")
    if headers is not None and not isinstance(headers, dict):
        raise ProtocolError("meta headers must be a map or nil")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("meta request_id must be a string or nil")
    return content_type, headers, request_id


def parse_control(data: bytes) -> dict[str, Any]:
    control = unpack_header(data)
    if not isinstance(control, dict) or not isinstance(control.get("op"), str):
        raise ProtocolError('control must be a map with a string "op"')
    return control


# ---------------------------------------------------------------- replies

def encode_reply_meta(status: int = 200, content_type: str | None = None,
                      headers: dict[str, str] | None = None) -> bytes:
    return packb((status, content_type, headers))


def parse_reply_meta(data: bytes) -> tuple[int, str | None, dict[str, str] | None]:
    meta = unpack_header(data)
    if (not isinstance(meta, list) or len(meta) != 3 or type(meta[0]) is not int
            or (meta[1] is not None and type(meta[1]) is not str)
            or (meta[2] is not None and not _is_str_map(meta[2]))):
        raise ProtocolError("reply meta must be [status: int, content_type: str | nil, "
                            "headers: {str: str} | nil]")
    return meta[0], meta[1], meta[2]


def add_reply_header(reply_meta: bytes, name: str, value: str) -> bytes:
    """reply_meta with the header `name: value` added, unless it has that header already (the
    handler's own wins); ProtocolError when it is not a reply meta."""
    status, content_type, headers = parse_reply_meta(reply_meta)
    if headers is not None and name in headers:
        return reply_meta
    return encode_reply_meta(status, content_type, {**(headers or {}), name: value})


def _is_str_map(value: Any) -> bool:
    return type(value) is dict and all(type(key) is str and type(item) is str
                                       for key, item in value.items())


def encode_error_info(code: str, message: str, status: int,
                      retry_after_ms: int | None = None) -> bytes:
    if retry_after_ms is None:
        return packb((code, message, status))
    return packb((code, message, status, retry_after_ms))


def parse_error_info(data: bytes) -> tuple[str, str, int, int | None]:
    """(code, message, status, retry_after_ms or None)."""
    info = unpack_header(data)
    if (not isinstance(info, list) or len(info) not in (3, 4) or not isinstance(info[0], str)
            or not isinstance(info[1], str) or not isinstance(info[2], int)):
        raise ProtocolError("error info must be [code, message, status(, retry_after_ms)]")
    if len(info) == 3:
        return info[0], info[1], info[2], None
    retry_after_ms = info[3]
    if type(retry_after_ms) is not int or retry_after_ms < 0:
        raise ProtocolError("error info retry_after_ms must be a non-negative integer")
    return info[0], info[1], info[2], retry_after_ms


def encode_error(rid_part: bytes, code: str, message: str, status: int,
                 retry_after_ms: int | None = None) -> list:
    """A broker-made error reply for the request whose rid head (rid_head()) is rid_part;
    the ROUTER identity goes in front."""
    return [VERSION, REPLIES, rid_part + ERROR + encode_error_info(code, message, status,
                                                                     retry_after_ms), b""]


_CLIENT_REPLY_COMMANDS = frozenset((REPLY, ERROR, PARTIAL))


def parse_client_replies(frames: Sequence[Any]) -> list[tuple[bytes, bytes, bytes, Any]]:
    """Split a REPLIES message the client received into [(command, rid, a, body), ...], with
    command REPLY, ERROR or PARTIAL (see "reply head" above)."""
    command = check_envelope(frames, 4)
    if command != REPLIES:
        raise ProtocolError(f"unexpected command {command!r} for a client")
    count, extra = divmod(len(frames) - 2, 2)
    if extra or count > MAX_BATCH_ITEMS:
        raise ProtocolError("REPLIES items must come in (head, body) pairs, at most "
                            f"{MAX_BATCH_ITEMS}")
    replies = []
    for index in range(2, len(frames), 2):
        head = bytes(frames[index])
        at = 1 + head[0] if head else 0
        item_command = head[at:at + 1]
        if not at or item_command not in _CLIENT_REPLY_COMMANDS:
            raise ProtocolError("a reply head must be u8 len(rid), rid, REPLY/ERROR/PARTIAL, "
                                "then its meta")
        replies.append((item_command, head[1:at], head[at + 1:], frames[index + 1]))
    return replies


def coalesce_client_messages(messages: list[list]) -> list[list]:
    """The broker's outgoing client messages, [identity, VERSION, REPLIES, head, body, ...]
    each, with each identity's messages merged into REPLIES messages of at most
    MAX_BATCH_ITEMS items (order kept within each identity): one send per client per turn
    instead of one per reply."""
    if len(messages) < 2:
        return messages
    singles: dict[bytes, list] = {}  # identity -> its only message so far
    merged: dict[bytes, list] = {}   # identity -> its REPLIES message being filled
    done: list[list] = []
    for message in messages:
        identity = message[0]
        open_replies = merged.get(identity)
        if open_replies is not None:
            if len(open_replies) + len(message) - 3 > 3 + 2 * MAX_BATCH_ITEMS:
                done.append(open_replies)
                merged[identity] = message
            else:
                open_replies.extend(message[3:])
            continue
        first = singles.pop(identity, None)
        if first is None:
            singles[identity] = message
        else:
            merged[identity] = [*first, *message[3:]]
    done.extend(singles.values())
    done.extend(merged.values())
    return done


# ---------------------------------------------------------------- broker side
# What the broker's ROUTERs send: each message with its peer's identity frame first.

def encode_batch(identity: bytes, batch_id: int, sizes: Sequence[int], items: list) -> list:
    """A BATCH message to a worker, or BATCHES when sizes holds several batches; items are
    meta_1, body_1, ..., meta_n, body_n of all of them, in order."""
    if len(sizes) == 1:
        return [identity, VERSION, W_BATCH, _BATCH_ID.pack(batch_id), *items]
    return [identity, VERSION, W_BATCHES, _BATCH_ID.pack(batch_id), encode_batch_sizes(sizes),
            *items]


def encode_heartbeat_for(worker_identity: bytes) -> list:
    """A HEARTBEAT to a worker's heartbeat socket."""
    return [worker_identity + HEARTBEAT_SUFFIX, VERSION, W_HEARTBEAT]


def encode_disconnect_for(worker_identity: bytes, why: str = "") -> list:
    """A DISCONNECT to a worker: it exits (and logs `why`, when given)."""
    if why:
        return [worker_identity, VERSION, W_DISCONNECT, why.encode("utf-8")[:MAX_HEADER_BYTES]]
    return [worker_identity, VERSION, W_DISCONNECT]


def encode_client_reply(identity: bytes, rid_part: bytes, answer: bytes, body: Any) -> list:
    """A worker's answer (a W_REPLY item: REPLY | reply_meta, or ERROR | error_info) as the
    REPLIES message to the client whose request has this rid head; ProtocolError for an
    answer with any other command."""
    command = answer[:1]
    if command != REPLY and command != ERROR:
        raise ProtocolError(f"a worker answer must start with REPLY or ERROR, not {command!r}")
    return [identity, VERSION, REPLIES, rid_part + answer, body]


def encode_client_partial(identity: bytes, rid_part: bytes, reply_meta: Any,
                          body: Any) -> list:
    """A worker's streamed chunk (W_PARTIAL) as a PARTIAL reply to the request's client."""
    return [identity, VERSION, REPLIES, rid_part + PARTIAL + bytes(reply_meta), body]


def encode_control_reply(identity: bytes, rid_part: bytes, result: Any) -> list:
    """The answer to a CONTROL call: a REPLY with the result as a msgpack body."""
    return [identity, VERSION, REPLIES,
            rid_part + REPLY + encode_reply_meta(200, "application/msgpack"), packb(result)]


# ---------------------------------------------------------------- worker side

def encode_batch_id(batch_id: int) -> bytes:
    return _BATCH_ID.pack(batch_id)


def parse_batch_id(data: bytes) -> int:
    if len(data) != _BATCH_ID.size:
        raise ProtocolError("batch id must be 8 bytes")
    return _BATCH_ID.unpack(data)[0]


def encode_ready(model: str, version: str, worker_id: str, gpu_id: int | None, pid: int,
                 digest: str | None = None) -> list:
    info = {"model": model, "version": version, "worker_id": worker_id,
            "gpu_id": gpu_id, "pid": pid}
    if digest is not None:
        info["digest"] = digest
    return [VERSION, W_READY, packb(info)]


def parse_ready(data: bytes) -> dict[str, Any]:
    info = unpack_header(data)
    if not isinstance(info, dict):
        raise ProtocolError("READY info must be a map")
    for key, kind in (("model", str), ("version", str), ("worker_id", str), ("pid", int)):
        if not isinstance(info.get(key), kind):
            raise ProtocolError(f"READY info needs {key!r} of type {kind.__name__}")
    gpu_id = info.get("gpu_id")
    if "gpu_id" not in info or (gpu_id is not None and not isinstance(gpu_id, int)):
        raise ProtocolError("READY gpu_id must be an integer or nil")
    digest = info.get("digest")
    if digest is not None and not isinstance(digest, str):
        raise ProtocolError("READY digest must be a string or nil")
    return info


def encode_load_failed(model: str, version: str, worker_id: str, error: str) -> list:
    info = {"model": model, "version": version, "worker_id": worker_id, "error": error[:4000]}
    return [VERSION, W_LOAD_FAILED, packb(info)]


def parse_load_failed(data: bytes) -> dict[str, Any]:
    info = unpack_header(data)
    if not isinstance(info, dict):
        raise ProtocolError("LOAD_FAILED info must be a map")
    for key in ("model", "version", "worker_id", "error"):
        if not isinstance(info.get(key), str):
            raise ProtocolError(f"LOAD_FAILED info needs {key!r} of type str")
    return info


def encode_batch_sizes(sizes: Sequence[int]) -> bytes:
    """The sizes frame of a BATCHES message."""
    return struct.pack(f"<{len(sizes)}I", *sizes)


def parse_batch(frames: Sequence[Any]) -> tuple[int, list[tuple[Any, Any]], list[int]]:
    """Split a BATCH or BATCHES message the worker received into
    (batch_id, [(meta, body), ...], [size of each batch, in order])."""
    command = check_envelope(frames, 5)
    if command == W_BATCH:
        items = frames[3:]
    elif command == W_BATCHES:
        items = frames[4:]
    else:
        raise ProtocolError(f"expected BATCH or BATCHES, got {command!r}")
    if not items or len(items) % 2:
        raise ProtocolError("BATCH items must come in (meta, body) pairs")
    batch_id = parse_batch_id(bytes(frames[2]))
    count = len(items) // 2
    if command == W_BATCH:
        sizes = [count]
    else:
        sizes_frame = bytes(frames[3])
        if not sizes_frame or len(sizes_frame) % _BATCH_SIZE.size:
            raise ProtocolError("BATCHES sizes must be one u32 per batch")
        sizes = [size for (size,) in _BATCH_SIZE.iter_unpack(sizes_frame)]
        if min(sizes) < 1 or sum(sizes) != count:
            raise ProtocolError(f"BATCHES sizes {sizes} do not split its {count} requests")
    return batch_id, [(items[i], items[i + 1]) for i in range(0, len(items), 2)], sizes


def split_worker_reply(frames: Sequence[Any]) -> tuple[int, list]:
    """Split a W_REPLY (after the envelope) into (batch_id, flat [answer, body, ...] items)."""
    if len(frames) < 3:
        raise ProtocolError("W_REPLY needs a batch id")
    items = frames[3:]
    if len(items) % 2:
        raise ProtocolError("W_REPLY items must come in (answer, body) pairs")
    return parse_batch_id(bytes(frames[2])), items


def encode_reply_answer(reply_meta: bytes, body: Any) -> tuple[bytes, Any]:
    """One W_REPLY item for an answered request: (REPLY | reply_meta, body)."""
    return REPLY + reply_meta, body


def encode_error_answer(code: str, message: str, status: int) -> tuple[bytes, bytes]:
    """One W_REPLY item for a failed request: (ERROR | error_info, b"")."""
    return ERROR + encode_error_info(code, message, status), b""


def encode_worker_reply(batch_id: int, answers: Sequence[tuple[bytes, Any]]) -> list:
    """The W_REPLY for a BATCH or BATCHES message: one (answer, body) pair per request, in
    order (encode_reply_answer, encode_error_answer)."""
    frames = [VERSION, W_REPLY, _BATCH_ID.pack(batch_id)]
    for answer in answers:
        frames.extend(answer)
    return frames


def encode_worker_partial(batch_id: int, index: int, reply_meta: bytes, body: Any) -> list:
    """A W_PARTIAL: one streamed chunk for request `index` of the running batch."""
    return [VERSION, W_PARTIAL, _BATCH_ID.pack(batch_id), _PARTIAL_INDEX.pack(index),
            reply_meta, body]


def is_disconnect(frames: Sequence[Any]) -> bool:
    """Whether a message is a DISCONNECT ([VERSION, W_DISCONNECT] or, from the broker, with
    a reason frame): the worker is dismissed (it serves a model the broker does not know, or
    a remote worker was refused at READY)."""
    return (len(frames) in (2, 3) and bytes(frames[0]) == VERSION
            and bytes(frames[1]) == W_DISCONNECT)


def disconnect_reason(frames: Sequence[Any]) -> str:
    """The reason a DISCONNECT carries, "" for none (decoded leniently: it is only logged)."""
    if len(frames) < 3:
        return ""
    return bytes(frames[2])[:MAX_HEADER_BYTES].decode("utf-8", "replace")


def is_heartbeat(frames: Sequence[Any]) -> bool:
    """Whether a message is a HEARTBEAT ([VERSION, W_HEARTBEAT])."""
    return (len(frames) == 2 and bytes(frames[0]) == VERSION
            and bytes(frames[1]) == W_HEARTBEAT)


def parse_worker_partial(frames: Sequence[Any]) -> tuple[int, int, Any, Any]:
    """Split a W_PARTIAL (after the envelope) into (batch_id, index, reply_meta, body)."""
    if len(frames) != 6:
        raise ProtocolError("W_PARTIAL must be [VERSION, W_PARTIAL, batch_id, index, "
                            "reply_meta, body]")
    index = bytes(frames[3])
    if len(index) != _PARTIAL_INDEX.size:
        raise ProtocolError("W_PARTIAL index must be 4 bytes")
    return (parse_batch_id(bytes(frames[2])), _PARTIAL_INDEX.unpack(index)[0], frames[4],
            frames[5])
