"""The wire protocol: round trips of every header and head, rejection of malformed frames, and
the coalesced forms (several requests in one REQUEST, several replies in one REPLIES)."""

from __future__ import annotations

import pytest

from zerobatch import protocol as p
from zerobatch.errors import ProtocolError


def test_headers_round_trip():
    meta = p.encode_meta("text/plain", {"x-a": "1"}, "req-1")
    assert p.parse_meta(meta) == ("text/plain", {"x-a": "1"}, "req-1")
    assert p.parse_reply_meta(p.encode_reply_meta(201, "a/b", {"h": "v"})) == (201, "a/b",
                                                                               {"h": "v"})
    assert p.parse_error_info(p.encode_error_info("queue_full", "full", 503)) == (
        "queue_full", "full", 503, None)
    assert p.parse_error_info(p.encode_error_info("deadline_unreachable", "late", 503, 7)) == (
        "deadline_unreachable", "late", 503, 7)
    assert p.parse_batch_id(p.encode_batch_id(2**40 + 3)) == 2**40 + 3
    assert p.parse_control(p.encode_control(b"r", "describe")[3]) == {"op": "describe"}


def test_a_meta_that_cannot_be_encoded_says_what_it_must_be():
    with pytest.raises(TypeError, match="headers as a dict of str to str"):
        p.encode_meta("text/plain", {"x-a": object()})


def test_a_request_head_splits_into_its_rid_route_and_meta():
    meta = p.encode_meta("text/plain", {"x-a": "1"}, "req-1")
    for route in (p.encode_route("m", "2.0", 150), p.encode_route("m" * 300, None, 0)):
        head = p.encode_request_head(b"rid-1", route, meta)
        rid, route_part, meta_part = p.split_request_head(head)
        assert rid == p.rid_head(b"rid-1") == b"\x05rid-1"
        assert p.parse_route(route_part) == p.parse_route(route[2:])
        assert meta_part == meta
    assert p.parse_route(p.encode_route("m", None, 0)[2:]) == ("m", None, 0)
    frames = p.encode_request(b"r", p.encode_route("m", None, 0), meta, b"body")
    assert frames[:2] == [p.VERSION, p.REQUEST] and frames[3] == b"body" and len(frames) == 4


@pytest.mark.parametrize("head", [b"", b"\x05abc", bytes([p.MAX_RID_BYTES + 1]) + b"r" * 80])
def test_a_request_head_without_a_readable_rid_is_rejected(head):
    with pytest.raises(ProtocolError):
        p.split_request_head(head)


@pytest.mark.parametrize("head", [b"\x01r", b"\x01r\x05", b"\x01r\x05\x00abc"])
def test_a_route_past_the_head_is_empty_so_the_rid_can_be_answered(head):
    assert p.split_request_head(head) == (b"\x01r", b"", b"")
    with pytest.raises(ProtocolError):
        p.parse_route(b"")


def test_a_long_rid_or_route_has_no_head():
    with pytest.raises(ProtocolError):
        p.rid_head(b"r" * (p.MAX_RID_BYTES + 1))
    with pytest.raises(ProtocolError):
        p.encode_route("m" * (p.MAX_HEADER_BYTES + 1), None, 0)


@pytest.mark.parametrize("route", [
    p.packb(("m", None)), p.packb(("", None, 0)), p.packb(("m", 3, 0)),
    p.packb(("m", None, -1)), p.packb(("m", None, True)), b"\xc1", b"\x92" * 10,
    p.packb("x" * (p.MAX_HEADER_BYTES + 1)),
])
def test_malformed_route_is_rejected(route):
    with pytest.raises(ProtocolError):
        p.parse_route(route)


def reply(rid: bytes, command: bytes = p.REPLY, a: bytes = b"meta") -> bytes:
    return p.rid_head(rid) + command + a


@pytest.mark.parametrize("frames", [
    [b"ZB0", p.REPLIES, reply(b"r"), b""],                  # unknown version
    [p.VERSION, p.REPLIES, reply(b"r")],                    # too short
    [p.VERSION, p.REPLY, reply(b"r"), b""],                 # not the client reply command
    [p.VERSION, p.REPLIES, reply(b"r"), b"", reply(b"s")],  # incomplete pair
    [p.VERSION, p.REPLIES, reply(b"r", p.CONTROL), b""],    # an item with a bad command
    [p.VERSION, p.REPLIES, b"", b""],                       # an empty head
    [p.VERSION, p.REPLIES, b"\x05ab", b""],                 # a rid past the head
])
def test_malformed_client_replies_are_rejected(frames):
    with pytest.raises(ProtocolError):
        p.parse_client_replies(frames)


def test_replies_parse_into_commands_rids_and_metas():
    frames = [p.VERSION, p.REPLIES, reply(b"r1", a=b"m1"), b"b1",
              reply(b"r2", p.ERROR, b"info"), b"", reply(b"", p.PARTIAL, b""), b"b3"]
    assert p.parse_client_replies(frames) == [
        (p.REPLY, b"r1", b"m1", b"b1"), (p.ERROR, b"r2", b"info", b""),
        (p.PARTIAL, b"", b"", b"b3")]
    [(command, rid, info, body)] = p.parse_client_replies(
        p.encode_error(p.rid_head(b"r9"), "queue_full", "full", 503))
    assert (command, rid, body) == (p.ERROR, b"r9", b"")
    assert p.parse_error_info(info) == ("queue_full", "full", 503, None)


def test_coalesce_merges_per_identity_and_keeps_order():
    def message(identity: bytes, rid: bytes) -> list:
        return [identity, p.VERSION, p.REPLIES, reply(rid), rid + b"-body"]

    messages = [message(b"A", b"1"), message(b"B", b"2"), message(b"A", b"3"),
                message(b"A", b"4")]
    out = p.coalesce_client_messages(messages)
    by_identity = {m[0]: m for m in out}
    assert set(by_identity) == {b"A", b"B"}
    assert by_identity[b"B"] == message(b"B", b"2")  # alone: sent as it was
    assert [(rid, body) for _c, rid, _a, body in p.parse_client_replies(by_identity[b"A"][1:])
            ] == [(b"1", b"1-body"), (b"3", b"3-body"), (b"4", b"4-body")]


def test_coalesce_splits_at_the_item_limit(monkeypatch):
    monkeypatch.setattr(p, "MAX_BATCH_ITEMS", 3)
    messages = [[b"A", p.VERSION, p.REPLIES, reply(b"%d" % i), b"b"] for i in range(7)]
    out = p.coalesce_client_messages(messages)
    rids = [rid for m in out for _c, rid, _a, _b in p.parse_client_replies(m[1:])]
    assert rids == [b"%d" % i for i in range(7)]
    assert all(len(m) <= 3 + 2 * 3 for m in out)
    assert p.coalesce_client_messages(messages[:1]) == messages[:1]


# ---------------------------------------------------------------- batches to a worker

def test_batch_and_batches_parse_into_items_and_sizes():
    one = [p.VERSION, p.W_BATCH, p.encode_batch_id(7), b"m0", b"b0", b"m1", b"b1"]
    assert p.parse_batch(one) == (7, [(b"m0", b"b0"), (b"m1", b"b1")], [2])
    grouped = [p.VERSION, p.W_BATCHES, p.encode_batch_id(8), p.encode_batch_sizes([1, 2]),
               b"m0", b"b0", b"m1", b"b1", b"m2", b"b2"]
    assert p.parse_batch(grouped) == (8, [(b"m0", b"b0"), (b"m1", b"b1"), (b"m2", b"b2")],
                                      [1, 2])


@pytest.mark.parametrize("sizes", [b"", b"\x01\x00\x00", p.encode_batch_sizes([1, 1]),
                                   p.encode_batch_sizes([3, 0]), p.encode_batch_sizes([1])])
def test_batches_whose_sizes_do_not_split_the_items_are_rejected(sizes):
    frames = [p.VERSION, p.W_BATCHES, p.encode_batch_id(1), sizes, b"m0", b"b0", b"m1", b"b1",
              b"m2", b"b2"]
    with pytest.raises(ProtocolError):
        p.parse_batch(frames)


def test_other_commands_are_not_batches():
    with pytest.raises(ProtocolError):
        p.parse_batch([p.VERSION, p.W_REPLY, p.encode_batch_id(1), b"m", b"b"])
    with pytest.raises(ProtocolError):
        p.parse_batch([p.VERSION, p.W_BATCHES, p.encode_batch_id(1), b"m", b"b"])


# ---------------------------------------------------------------- what the broker sends

def test_the_broker_batch_messages_parse_back_in_the_worker():
    items = [b"m0", b"b0", b"m1", b"b1", b"m2", b"b2"]
    one = p.encode_batch(b"w1", 7, [3], items)
    assert one[:3] == [b"w1", p.VERSION, p.W_BATCH]
    assert p.parse_batch(one[1:]) == (7, [(b"m0", b"b0"), (b"m1", b"b1"), (b"m2", b"b2")], [3])
    grouped = p.encode_batch(b"w1", 8, [1, 2], items)
    assert grouped[:3] == [b"w1", p.VERSION, p.W_BATCHES]
    assert p.parse_batch(grouped[1:])[0::2] == (8, [1, 2])


def test_the_broker_heartbeat_and_disconnect_go_to_the_workers_sockets():
    assert p.encode_heartbeat_for(b"w1") == [b"w1" + p.HEARTBEAT_SUFFIX, *p.HEARTBEAT_FRAMES]
    assert p.encode_disconnect_for(b"w1") == [b"w1", *p.DISCONNECT_FRAMES]


def test_the_broker_forwards_worker_answers_and_chunks_to_the_client():
    rid = p.rid_head(b"r1")
    meta = p.encode_reply_meta(200, "text/plain")
    error = p.encode_error_info("handler_error", "boom", 500)
    messages = [p.encode_client_reply(b"c", rid, p.REPLY + meta, b"answer"),
                p.encode_client_reply(b"c", rid, p.ERROR + error, b""),
                p.encode_client_partial(b"c", rid, meta, b"chunk")]
    assert [m[0] for m in messages] == [b"c"] * 3
    assert [p.parse_client_replies(m[1:]) for m in messages] == [
        [(p.REPLY, b"r1", meta, b"answer")], [(p.ERROR, b"r1", error, b"")],
        [(p.PARTIAL, b"r1", meta, b"chunk")]]


@pytest.mark.parametrize("answer", [b"", p.PARTIAL + b"meta", b"\x7fmeta"])
def test_a_worker_answer_that_is_neither_reply_nor_error_is_not_forwarded(answer):
    with pytest.raises(ProtocolError):
        p.encode_client_reply(b"c", p.rid_head(b"r1"), answer, b"")


def test_a_control_reply_carries_its_result_as_msgpack():
    (reply,) = p.parse_client_replies(p.encode_control_reply(b"c", p.rid_head(b"c1"),
                                                             {"status": "Healthy"})[1:])
    command, rid, meta, body = reply
    assert (command, rid) == (p.REPLY, b"c1")
    assert p.parse_reply_meta(meta) == (200, "application/msgpack", None)
    assert p.unpack_header(body) == {"status": "Healthy"}
