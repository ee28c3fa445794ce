"""Property-based fuzzing of every parser that reads a peer's bytes (hypothesis).

- the wire protocol (zerobatch.protocol): envelopes, request heads, rids, routes, metas,
  controls, reply metas, error infos, READY / LOAD_FAILED, worker frames, client replies:
  garbage raises ProtocolError and nothing else, what parses has the documented types, and
  whatever an encoder makes parses back to what went in;
- the broker core fed any sequence of client and worker messages and ticks (the checks of
  tests/fuzz/broker_frames.py, on both aggregator twins): it never raises, what it sends
  parses, its books balance, and a well-formed request is still answered afterwards;
- the clients' core fed any REPLIES messages (tests/fuzz/client_replies.py);
- the worker's request decoding: forms (worker.forms), bodies (worker.codec) and whole
  BATCH messages through its Service (tests/fuzz/worker_requests.py);
- the HTTP app (api.http_app) in process, over a stand-in client that encodes each request
  as the real client core does: no request makes it fail unexpectedly (500).

The atheris targets in tests/fuzz/ run the same checks coverage-guided (docs/fuzzing.md).
"""

from __future__ import annotations

import asyncio
import json
import struct
import urllib.parse
from typing import Any

import falcon.testing
import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.fuzz import broker_frames, client_replies, worker_requests
from tests.support.forms import multipart
from zerobatch import protocol as p
from zerobatch.api.client_core import ClientCore
from zerobatch.api.client_helpers import Reply
from zerobatch.api.http_app import create_app
from zerobatch.broker import aggregator
from zerobatch.config import FrontendConfig
from zerobatch.errors import ProtocolError
from zerobatch.worker.codec import decode_body
from zerobatch.worker.forms import FormError, decode_form

#: the whole file runs in about ten seconds; the atheris targets are for long runs
FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MORE = settings(FUZZ, max_examples=200)
FEW = settings(FUZZ, max_examples=40)

# ------------------------------------------------------------------ strategies

#: what msgpack can carry: the values a peer may put in a header frame
scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
           | st.text(max_size=12) | st.binary(max_size=12))
values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=6) | st.binary(max_size=4), children,
                                        max_size=4), max_leaves=10)
#: near-valid fields: right shape, any types
fields = (st.text(max_size=10) | st.none() | st.integers(-5, 10**6) | st.binary(max_size=4)
          | values)


def packed(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return strategy.map(lambda value: msgpack.packb(value, use_bin_type=True))


#: a header frame: raw bytes, any msgpack value, or a list/map of near-valid fields
headers = (st.binary(max_size=40) | packed(values) | packed(st.lists(fields, max_size=5))
           | packed(st.dictionaries(st.sampled_from(["op", "model", "version", "worker_id",
                                                     "gpu_id", "pid", "error", "x"]),
                                    fields, max_size=7)))
texts = st.text(max_size=20)
header_maps = st.none() | st.dictionaries(texts, texts, max_size=3)
rids = st.binary(max_size=p.MAX_RID_BYTES)
frames_any = st.lists(st.binary(max_size=24), max_size=8)


# ------------------------------------------------------------------ envelopes, heads, rids

@FUZZ
@given(frames=frames_any | st.lists(st.sampled_from([p.VERSION, p.REQUEST, p.REPLIES, b""]),
                                    max_size=5),
       min_frames=st.integers(2, 6))  # every message has the version and command frames
def test_envelope(frames, min_frames):
    try:
        command = p.check_envelope(frames, min_frames)
    except ProtocolError:
        assert len(frames) < min_frames or not frames or frames[0] != p.VERSION
    else:
        assert len(frames) >= min_frames and frames[0] == p.VERSION and command == frames[1]


@FUZZ
@given(rid=rids, model=st.text(min_size=1, max_size=30), version=st.none() | texts,
       timeout_ms=st.integers(0, 2**64 - 1), content_type=texts, header_map=header_maps,
       request_id=st.none() | texts)
def test_request_heads_round_trip(rid, model, version, timeout_ms, content_type, header_map,
                                  request_id):
    route = p.encode_route(model, version, timeout_ms)
    meta = p.encode_meta(content_type, header_map, request_id)
    head = p.encode_request_head(rid, route, meta)
    rid_part, route_part, meta_part = p.split_request_head(head)
    assert rid_part == p.rid_head(rid) and p.request_rid(head) == rid
    assert p.parse_route(route_part) == (model, version, timeout_ms)
    assert p.parse_meta(meta_part) == (content_type, header_map, request_id)


@FUZZ
@given(head=st.binary(max_size=80)
       | st.builds(lambda rid, route, meta: p.rid_head(rid) + route + meta,
                   st.binary(max_size=8), st.binary(max_size=12) | st.builds(
                       p.encode_route, st.text(max_size=4), st.none(), st.integers(0, 9)),
                   st.binary(max_size=8)))
def test_garbage_request_heads(head):
    try:
        rid_part, route, meta = p.split_request_head(head)
    except ProtocolError:
        assert not head or head[0] > p.MAX_RID_BYTES or len(head) < 1 + head[0]
        return
    assert rid_part == head[:1 + head[0]] and p.request_rid(head) == head[1:1 + head[0]]
    if route:
        assert head == rid_part + struct.pack("<H", len(route)) + route + meta
    else:
        assert meta == b""
    for parse in (p.parse_route, p.parse_meta):
        try:
            parse(route)
        except ProtocolError:
            pass


@FUZZ
@given(rid=st.binary(max_size=2 * p.MAX_RID_BYTES))
def test_rid_heads(rid):
    if len(rid) > p.MAX_RID_BYTES:
        with pytest.raises(ProtocolError):
            p.rid_head(rid)
    else:
        assert p.split_request_head(p.rid_head(rid))[0][1:] == rid


# ------------------------------------------------------------------ header frames

def _is_str_map(value: Any) -> bool:
    return type(value) is dict and all(type(k) is str and type(v) is str
                                       for k, v in value.items())


def _check_route(route: Any) -> None:
    model, version, timeout_ms = route
    assert type(model) is str and model
    assert version is None or type(version) is str
    assert type(timeout_ms) is int and timeout_ms >= 0


def _check_meta(meta: Any) -> None:
    content_type, header_map, request_id = meta
    assert type(content_type) is str
    assert header_map is None or type(header_map) is dict
    assert request_id is None or type(request_id) is str


def _check_reply_meta(meta: Any) -> None:
    status, content_type, header_map = meta
    assert type(status) is int
    assert content_type is None or type(content_type) is str
    assert header_map is None or _is_str_map(header_map)


def _check_error_info(info: Any) -> None:
    code, message, status, retry_after_ms = info
    assert type(code) is str and type(message) is str and isinstance(status, int)
    assert retry_after_ms is None or (type(retry_after_ms) is int and retry_after_ms >= 0)


def _check_ready(info: Any) -> None:
    for key, kind in (("model", str), ("version", str), ("worker_id", str), ("pid", int)):
        assert isinstance(info[key], kind)
    assert info["gpu_id"] is None or isinstance(info["gpu_id"], int)


def _check_load_failed(info: Any) -> None:
    assert all(type(info[key]) is str for key in ("model", "version", "worker_id", "error"))


HEADER_PARSERS = {
    "route": (p.parse_route, _check_route),
    "meta": (p.parse_meta, _check_meta),
    "control": (p.parse_control, lambda c: type(c) is dict and type(c["op"]) is str),
    "reply_meta": (p.parse_reply_meta, _check_reply_meta),
    "error_info": (p.parse_error_info, _check_error_info),
    "ready": (p.parse_ready, _check_ready),
    "load_failed": (p.parse_load_failed, _check_load_failed),
    "batch_id": (p.parse_batch_id, lambda batch_id: 0 <= batch_id < 2**64),
    "header": (p.unpack_header, lambda value: None),
}


@MORE
@given(data=headers)
@example(data=p.packb({"model": "m", "version": "1", "worker_id": "w", "pid": 1}))  # no gpu_id
@example(data=p.packb([200, 5, None]))  # a reply meta whose content type is no string
@example(data=p.packb([200, None, {"a": 1}]))  # ... whose headers are not {str: str}
@example(data=b"\x91" * 5000)  # nested deeper than the limits allow
def test_header_parsers_raise_only_protocol_error(data):
    for name, (parse, check) in HEADER_PARSERS.items():
        try:
            result = parse(data)
        except ProtocolError:
            continue
        assert check(result) is not False, name


@FUZZ
@given(status=st.integers(-2**63, 2**63), content_type=st.none() | texts, header_map=header_maps,
       code=texts, message=texts, retry_after_ms=st.none() | st.integers(0, 2**63),
       info=st.fixed_dictionaries({"model": texts, "version": texts, "worker_id": texts,
                                   "gpu_id": st.none() | st.integers(0, 64),
                                   "pid": st.integers(1, 2**31)}))
def test_header_encoders_round_trip(status, content_type, header_map, code, message,
                                    retry_after_ms, info):
    assert p.parse_reply_meta(p.encode_reply_meta(status, content_type, header_map)) == (
        status, content_type, header_map)
    assert p.parse_error_info(p.encode_error_info(code, message, status, retry_after_ms)) == (
        code, message, status, retry_after_ms)
    assert p.parse_control(p.encode_control(b"r", code, x=message)[3]) == {"op": code,
                                                                          "x": message}
    ready = p.encode_ready(info["model"], info["version"], info["worker_id"], info["gpu_id"],
                           info["pid"])
    assert p.check_envelope(ready, 3) == p.W_READY and p.parse_ready(ready[2]) == info
    failed = p.encode_load_failed(info["model"], info["version"], info["worker_id"], message)
    assert p.parse_load_failed(failed[2]) == {"model": info["model"],
                                              "version": info["version"],
                                              "worker_id": info["worker_id"], "error": message}


# ------------------------------------------------------------------ worker frames

worker_frames = frames_any | st.builds(
    lambda command, batch_id, rest: [p.VERSION, command, batch_id, *rest],
    st.sampled_from([p.W_BATCH, p.W_BATCHES, p.W_REPLY, p.W_PARTIAL, b"\x00"]),
    st.binary(min_size=7, max_size=9) | st.integers(0, 9).map(p.encode_batch_id),
    st.lists(st.binary(max_size=12) | st.lists(st.integers(0, 4), min_size=1, max_size=3)
             .map(p.encode_batch_sizes), max_size=7))


@FUZZ
@given(frames=worker_frames)
def test_garbage_worker_frames(frames):
    try:
        batch_id, pairs, sizes = p.parse_batch(frames)
    except ProtocolError:
        pass
    else:
        assert 0 <= batch_id < 2**64 and pairs and min(sizes) >= 1 and sum(sizes) == len(pairs)
    for split in (p.split_worker_reply, p.parse_worker_partial):
        try:
            split(frames)
        except ProtocolError:
            pass
    assert p.is_heartbeat(frames) == (frames == p.HEARTBEAT_FRAMES)


@FUZZ
@given(batch_id=st.integers(0, 2**64 - 1),
       sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       data=st.data())
def test_worker_frames_round_trip(batch_id, sizes, data):
    items = data.draw(st.lists(st.binary(max_size=8), min_size=2 * sum(sizes),
                               max_size=2 * sum(sizes)))
    message = p.encode_batch(b"worker", batch_id, sizes, items)
    assert message[0] == b"worker"
    got_id, pairs, got_sizes = p.parse_batch(message[1:])
    assert (got_id, got_sizes) == (batch_id, sizes)
    assert [x for pair in pairs for x in pair] == items
    answers = list(zip(items[::2], items[1::2], strict=True))
    assert p.split_worker_reply(p.encode_worker_reply(batch_id, answers)) == (batch_id, items)
    index = data.draw(st.integers(0, 2**32 - 1))
    assert p.parse_worker_partial(p.encode_worker_partial(batch_id, index, b"m", b"b")) == (
        batch_id, index, b"m", b"b")


# ------------------------------------------------------------------ client replies

client_frames = frames_any | st.builds(
    lambda command, rest: [p.VERSION, command, *rest],
    st.sampled_from([p.REPLIES, p.REPLY, b"\x00"]),
    st.lists(st.binary(max_size=12) | st.builds(
        lambda rid, command, a: p.rid_head(rid) + command + a,
        st.sampled_from(client_replies.RIDS) | st.binary(max_size=9),
        st.sampled_from([p.REPLY, p.ERROR, p.PARTIAL, b"\x07", b""]), headers), max_size=8))


@FUZZ
@given(frames=client_frames)
def test_garbage_client_replies(frames):
    try:
        replies = p.parse_client_replies(frames)
    except ProtocolError:
        return
    assert len(replies) == (len(frames) - 2) // 2
    for command, rid, _a, _body in replies:
        assert command in (p.REPLY, p.ERROR, p.PARTIAL) and len(rid) <= 255


answers = st.one_of(
    st.builds(lambda rid, meta, body: ("reply", rid, meta, body), rids,
              st.builds(p.encode_reply_meta, st.integers(100, 599), st.none() | texts,
                        header_maps), st.binary(max_size=8)),
    st.builds(lambda rid, code, message: ("error", rid, code, message), rids, texts, texts),
    st.builds(lambda rid, meta, body: ("partial", rid, meta, body), rids,
              st.builds(p.encode_reply_meta), st.binary(max_size=8)),
    st.builds(lambda rid, result: ("control", rid, result, None), rids,
              st.dictionaries(texts, texts, max_size=3)))


@FUZZ
@given(sent=st.lists(st.tuples(st.sampled_from([b"c1", b"c2", b"c3"]), answers), max_size=12))
def test_client_replies_round_trip(sent):
    """What the broker sends, coalesced per client as its loop sends it, reads back the same,
    in order, for each client."""
    messages = []
    expected: dict[bytes, list] = {}
    for identity, (kind, rid, a, b) in sent:
        rid_part = p.rid_head(rid)
        if kind == "reply":
            messages.append(p.encode_client_reply(identity, rid_part, p.REPLY + a, b))
            item = (p.REPLY, rid, a, b)
        elif kind == "error":
            messages.append([identity] + p.encode_error(rid_part, a, b, 503))
            item = (p.ERROR, rid, p.encode_error_info(a, b, 503), b"")
        elif kind == "partial":
            messages.append(p.encode_client_partial(identity, rid_part, a, b))
            item = (p.PARTIAL, rid, a, b)
        else:
            messages.append(p.encode_control_reply(identity, rid_part, a))
            item = (p.REPLY, rid, p.encode_reply_meta(200, "application/msgpack"), p.packb(a))
        expected.setdefault(identity, []).append(item)
    got: dict[bytes, list] = {}
    for message in p.coalesce_client_messages(messages):
        got.setdefault(message[0], []).extend(p.parse_client_replies(message[1:]))
    assert got == expected


reply_messages = st.lists(client_frames | st.lists(st.builds(
    lambda rid, answer, body: [p.rid_head(rid) + answer, body],
    st.sampled_from(client_replies.RIDS),
    st.sampled_from([p.REPLY, p.ERROR, p.PARTIAL]).flatmap(
        lambda command: st.builds(lambda a: command + a, headers | st.builds(
            p.encode_error_info, st.sampled_from(["deadline_unreachable", "queue_full", "x"]),
            texts, st.integers(0, 600), st.none() | st.integers(0, 10**6)))),
    st.binary(max_size=8) | packed(values)), min_size=1, max_size=4).map(
        lambda pairs: [p.VERSION, p.REPLIES, *[x for pair in pairs for x in pair]]),
    max_size=4)


@FUZZ
@given(messages=reply_messages)
def test_client_core_survives_any_replies(messages):
    core = ClientCore()
    calls = client_replies.open_calls(core)
    client_replies.run_messages(core, calls, messages)
    client_replies.check_still_works(core, len(messages) + 1)


@FEW
@given(messages=st.lists(st.lists(st.binary(max_size=20), max_size=15), max_size=5))
def test_client_replies_input_format_round_trips(messages):
    data = client_replies.encode_messages(messages)
    assert client_replies.decode_messages(data) == messages


# ------------------------------------------------------------------ the broker core

FRONT = broker_frames.FRONT_IDENTITIES
BACK = broker_frames.BACK_IDENTITIES[:2]
routes = (st.builds(p.encode_route, st.sampled_from(["echo", "nope", ""]).filter(bool),
                    st.sampled_from([None, "1.0", "2.0", "9"]), st.integers(0, 3000))
          | st.binary(max_size=12)
          | packed(st.lists(fields, max_size=4)).map(lambda r: struct.pack("<H", len(r)) + r))
request_heads = (st.builds(lambda rid, route, meta: p.rid_head(rid) + route + meta,
                           st.binary(max_size=9), routes,
                           st.just(p.encode_meta("text/plain")) | st.binary(max_size=8))
                 | st.binary(max_size=20))
requests = st.builds(
    lambda pairs, extra: [p.VERSION, p.REQUEST, *[x for pair in pairs for x in pair], *extra],
    st.lists(st.tuples(request_heads, st.binary(max_size=300)), min_size=1, max_size=3),
    st.lists(request_heads, max_size=1))
controls = st.builds(lambda rid, control: [p.VERSION, p.CONTROL, rid, control],
                     st.binary(max_size=70),
                     st.sampled_from(["ping", "describe", "stop", "nope"])
                     .map(lambda op: p.packb({"op": op})) | headers)
garbage = frames_any | st.builds(lambda command, rest: [p.VERSION, command, *rest],
                                 st.binary(min_size=1, max_size=1), frames_any)
front_ops = st.tuples(st.just("front"), st.sampled_from(FRONT), requests | controls | garbage)

batch_ids = st.integers(0, 6)
worker_answers = st.lists(st.tuples(
    st.builds(lambda meta: p.REPLY + meta, st.builds(p.encode_reply_meta))
    | st.builds(lambda e: p.ERROR + e, st.builds(p.encode_error_info, texts, texts,
                                                 st.integers(400, 599)))
    | st.binary(max_size=6), st.binary(max_size=6)), max_size=5)


def _ready(identity: bytes, version: str, worker_id: str, gpu_id: Any) -> tuple:
    return ("back", identity, p.encode_ready("echo", version, worker_id, gpu_id, 9))


back_ops = st.one_of(
    st.sampled_from(BACK).flatmap(lambda identity: st.builds(
        _ready, st.just(identity), st.sampled_from(["1.0", "2.0", "7"]),
        st.sampled_from([identity.decode(), identity.decode(), "w1", "zz"]),
        st.none() | st.integers(0, 3))),
    st.tuples(st.just("back"), st.sampled_from(BACK), st.builds(
        lambda batch_id, pairs: p.encode_worker_reply(batch_id, pairs), batch_ids,
        worker_answers)),
    st.tuples(st.just("back"), st.sampled_from(BACK), st.builds(
        p.encode_worker_partial, batch_ids, st.integers(0, 4), headers, st.binary(max_size=6))),
    st.tuples(st.just("back"), st.sampled_from(broker_frames.BACK_IDENTITIES), st.sampled_from(
        [p.HEARTBEAT_FRAMES, p.DISCONNECT_FRAMES,
         p.encode_load_failed("echo", "1.0", "w1", "/srv/models/x.py: boom")])),
    st.tuples(st.just("back"), st.sampled_from(broker_frames.BACK_IDENTITIES),
              garbage | st.builds(lambda command, info: [p.VERSION, command, info],
                                  st.sampled_from([p.W_READY, p.W_LOAD_FAILED]), headers)),
)
tick_ops = st.tuples(st.just("tick"), st.integers(0, 255).map(lambda n: n * 20))


def _as_zmq_frames(op: tuple, wrap: bool) -> tuple:
    if op[0] == "tick" or not wrap:
        return op
    return (op[0], op[1], [zmq.Frame(frame) for frame in op[2]])


broker_ops = st.lists(st.builds(_as_zmq_frames, front_ops | back_ops | tick_ops,
                                st.booleans()), max_size=20)


@pytest.mark.parametrize("twin", ["python", "compiled"])
@FUZZ
@given(ops=broker_ops)
@example(ops=[_ready(b"w1", "1.0", "zz", None), ("tick", 20)])  # a READY naming another worker
def test_broker_core_survives_any_messages_and_still_serves(twin, ops):
    try:
        aggregator_class = aggregator.load(twin)
    except Exception as exc:  # the compiled twin may be absent in a bare checkout
        pytest.skip(f"{twin} aggregator unavailable: {exc}")
    broker_frames.check_ops(ops, aggregator_class)


def test_a_ready_without_gpu_id_is_dropped_not_a_crash():
    """Found by the broker_frames target: parse_ready let a READY without "gpu_id" through,
    and the core's KeyError would have ended the broker's loop."""
    info = p.packb({"model": "echo", "version": "1.0", "worker_id": "w1", "pid": 3})
    core = broker_frames.make_core()
    broker_frames.run_ops(core, [("back", b"w1", [p.VERSION, p.W_READY, info])])
    assert not core.workers
    assert broker_frames.check_still_serves(core, 0)[0] == p.REPLY


@FEW
@given(ops=st.lists(front_ops | back_ops | tick_ops, max_size=10).filter(
    lambda ops: all(op[0] == "tick" or len(op[2]) <= 7 for op in ops)))
def test_broker_input_format_round_trips(ops):
    assert broker_frames.decode_ops(broker_frames.encode_ops(ops)) == [
        op if op[0] != "tick" else ("tick", op[1]) for op in ops]


# ------------------------------------------------------------------ the worker

content_types = st.one_of(
    texts,
    st.builds(lambda boundary, extra: f"multipart/form-data; boundary={boundary}{extra}",
              st.text(max_size=75), st.sampled_from(["", "; charset=utf-8", ";boundary=x"])),
    st.builds(lambda boundary: f'Multipart/Form-Data; boundary="{boundary}"', st.text(max_size=9)),
    st.sampled_from(["application/x-www-form-urlencoded", "application/json", "text/plain",
                     "text/csv; charset=latin-1", "image/png", "", "application/json-seq"]))
form_bodies = st.binary(max_size=200) | st.builds(
    lambda parts: b"".join(parts),
    st.lists(st.sampled_from([b"--", b"\r\n", b"\r\n\r\n", b"Content-Disposition: form-data; ",
                              b'name="a"', b'; filename="f"', b"Content-Type: application/json",
                              b"x", b"boundary", b"&", b"=", b"%", b"%zz", b"\xff", b"--x--"]),
             max_size=20))
#: RFC 2046 boundary characters (bchars), the last not a space
bchars = st.text("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ",
                 min_size=1, max_size=70).filter(lambda boundary: not boundary.endswith(" "))


@FUZZ
@given(content_type=content_types, body=form_bodies)
@example(content_type="multipart/form-data; boundary=\u20ac", body="--\u20ac".encode())
def test_garbage_forms_raise_only_form_error(content_type, body):
    try:
        form = decode_form(content_type, body)
    except FormError:
        return
    if form is not None:
        values, field_types = form
        assert set(values) == set(field_types)
        assert all(type(name) is str for name in values)
        assert all(type(kind) is str for kind in field_types.values())


@FUZZ
@given(boundary=bchars, parts=st.dictionaries(
    st.text("abcdefghij_-", min_size=1, max_size=8),
    st.tuples(st.none() | st.text("abc.", min_size=1, max_size=5), st.binary(max_size=30)),
    max_size=4))
def test_multipart_forms_round_trip(boundary, parts):
    body = multipart(boundary, *[(name, filename, None if filename is None else "image/png",
                                  content) for name, (filename, content) in parts.items()])
    values, field_types = decode_form(f'multipart/form-data; boundary="{boundary}"', body)
    assert values == {name: bytearray(content) for name, (_f, content) in parts.items()}
    assert field_types == {name: "" if filename is None else "image/png"
                           for name, (filename, _c) in parts.items()}


@FUZZ
@given(pairs=st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=8)),
                      max_size=6))
def test_urlencoded_forms_round_trip(pairs):
    values, field_types = decode_form("application/x-www-form-urlencoded",
                                      urllib.parse.urlencode(pairs).encode())
    assert values == {name: bytearray(value.encode()) for name, value in dict(pairs).items()}
    assert set(field_types.values()) <= {""}


@FUZZ
@given(content_type=content_types, body=st.binary(max_size=60) | packed(values)
       | st.builds(lambda v: json.dumps(v).encode(), st.recursive(
           st.none() | st.integers() | texts, lambda c: st.lists(c, max_size=3), max_leaves=6)))
@example(content_type="application/json", body=b"[" * 100_000)
def test_bodies_always_decode(content_type, body):
    value = decode_body(content_type, body)
    if "application/json" not in content_type.lower() and not content_type.lower().startswith(
            "text"):
        assert value == bytearray(body)


@FUZZ
@given(pairs=st.lists(st.tuples(content_types, form_bodies), min_size=1, max_size=6))
@example(pairs=[("multipart/form-data; boundary=\u20ac", b"--x"), ("text/plain", b"ok")])
def test_worker_service_answers_every_request(pairs):
    """The worker's Service on a whole batch: one well-formed answer per request, a bad
    form answered bad_request while the rest of the batch runs."""
    service = worker_requests.make_service()
    got = worker_requests.run_pairs(service, pairs)
    assert len(got) == len(pairs)
    for (content_type, body), (kind, _meta, reply) in zip(pairs, got, strict=True):
        if kind == "reply" and "form" not in content_type.lower():
            assert json.loads(reply) == {"body": type(decode_body(content_type, body)).__name__}


@FUZZ
@given(frames=worker_frames | st.builds(
    lambda batch_id, metas: [p.VERSION, p.W_BATCH, p.encode_batch_id(batch_id),
                             *[x for meta in metas for x in (meta, b"body")]],
    st.integers(0, 9), st.lists(headers | st.builds(p.encode_meta, content_types, header_maps,
                                                    st.none() | texts), min_size=1,
                                max_size=4)))
def test_worker_survives_any_batch_message(frames):
    worker_requests.run_message(worker_requests.make_service(), frames)


@FEW
@given(pairs=st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=20)), max_size=5))
def test_worker_input_format_round_trips(pairs):
    assert worker_requests.decode_pairs(worker_requests.encode_pairs(pairs)) == pairs


# ------------------------------------------------------------------ the HTTP app

class EncodingClient:
    """Stands in for the app's AsyncClient: each request is encoded as the real client core
    encodes it, read back as the broker and the worker read it, and answered with its
    body."""

    def __init__(self) -> None:
        self.core = ClientCore()
        self.requests: list[tuple] = []

    async def predict_or_stream(self, model: str, body: Any, *, version: str | None = None,
                                timeout_ms: int | None = None, content_type: str | None = None,
                                headers: dict | None = None,
                                request_id: str | None = None) -> Reply:
        call, message = self.core.request_message(model, body, 0, version, timeout_ms,
                                                  content_type, headers, request_id)
        self.core.forget(call)
        _rid, route, meta = p.split_request_head(message[2])
        assert p.parse_route(route) == (model, version, timeout_ms or 0)
        assert p.parse_meta(meta) == (content_type, headers, request_id)
        self.requests.append((model, version, bytes(message[3])))
        return Reply(200, "application/octet-stream", {"x-echo": "1"}, message[3])

    async def control(self, op: str, *, timeout_ms: int | None = None, **args: Any) -> dict:
        return {"status": "Healthy"}


token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
latin1 = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                 max_size=20)
segments = (st.text(min_size=1, max_size=10) | st.just("")).map(
    lambda s: urllib.parse.quote(s, safe=""))
http_headers = st.dictionaries(
    token | st.sampled_from(["content-type", "x-zerobatch-timeout-ms", "x-request-id",
                             "transfer-encoding", "expect"]),
    latin1 | st.integers(-5, 10**25).map(str)
    | st.builds(lambda boundary: f"multipart/form-data; boundary={boundary}", latin1)
    | st.sampled_from(["application/x-www-form-urlencoded", "application/json", "text/plain"]),
    max_size=5)


@FUZZ
@given(method=st.sampled_from(["POST", "POST", "POST", "PUT", "GET", "DELETE", "PATCH",
                               "OPTIONS", "HEAD"]),
       path=st.one_of(
           st.builds(lambda s: f"/predictions/{s}", segments),
           st.builds(lambda s, v: f"/predictions/{s}/{v}", segments, segments),
           st.builds(lambda s: f"/{s}", segments), st.just("/ping")),
       header_map=http_headers,
       body=st.binary(max_size=40) | st.binary(min_size=120, max_size=200))
@example(method="POST", path="/predictions/", header_map={}, body=b"x")  # no model: 404
@example(method="POST", path="/predictions/%2F", header_map={}, body=b"x")  # ... as falcon reads it
def test_http_app_never_fails_unexpectedly(method, path, header_map, body):
    client = EncodingClient()
    app = create_app(FrontendConfig(broker_address="tcp://127.0.0.1:9", max_request_bytes=128,
                                    default_timeout_ms=5000), client)

    async def call():
        async with falcon.testing.ASGIConductor(app) as conductor:
            return await conductor.simulate_request(method, path, headers=header_map,
                                                    body=body)

    result = asyncio.run(call())
    event(f"HTTP {result.status_code}")
    assert result.status_code != 500, result.text
    if result.status_code == 413 and path.startswith("/predictions/"):
        assert result.content == b""  # TorchServe's: Netty's aggregator sends no body
    elif result.status_code >= 400 and method != "HEAD":
        error = result.json
        assert set(error) == {"code", "type", "message"}
        assert error["code"] == result.status_code
    if client.requests and result.status_code == 200:
        model, version, sent = client.requests[0]
        # a HEAD predicts too (as in TorchServe), and its answer has no body
        assert sent == body and result.content == (b"" if method == "HEAD" else body)
        name = path.split("/")[2]
        assert model == urllib.parse.unquote(name, errors="replace") or "%" in name
