"""The wire protocol: round trips of every header, rejection of malformed frames, and the
coalesced forms (several requests in one REQUEST, several replies in one REPLIES)."""

from __future__ import annotations

import pytest

from zerobatch import protocol as p
from zerobatch.errors import ProtocolError


def test_headers_round_trip():
    assert p.parse_route(p.encode_route("m", "2.0", 150)) == ("m", "2.0", 150)
    assert p.parse_route(p.encode_route("m", None, 0)) == ("m", None, 0)
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


@pytest.mark.parametrize("route", [
    p.packb(("m", None)), p.packb(("", None, 0)), p.packb(("m", 3, 0)),
    p.packb(("m", None, -1)), p.packb(("m", None, True)), b"\xc1", b"\x92" * 10,
    p.packb("x" * (p.MAX_HEADER_BYTES + 1)),
])
def test_malformed_route_is_rejected(route):
    with pytest.raises(ProtocolError):
        p.parse_route(route)


@pytest.mark.parametrize("frames", [
    [b"ZB0", p.REPLY, b"r", b"", b""],                      # unknown version
    [p.VERSION, p.REPLY, b"r", b""],                        # too short
    [p.VERSION, p.REPLY, b"r", b"", b"", b""],              # too long for one reply
    [p.VERSION, p.REQUEST, b"r", b"", b""],                 # not a client reply command
    [p.VERSION, p.REPLIES, p.REPLY, b"r", b""],             # incomplete group
    [p.VERSION, p.REPLIES, p.CONTROL, b"r", b"", b""],      # a group with a bad command
])
def test_malformed_client_replies_are_rejected(frames):
    with pytest.raises(ProtocolError):
        p.parse_client_replies(frames)


def test_single_reply_and_replies_parse_to_the_same_items():
    single = [p.VERSION, p.REPLY, b"r1", b"meta", b"body"]
    assert p.parse_client_replies(single) == [(p.REPLY, b"r1", b"meta", b"body")]
    merged = [p.VERSION, p.REPLIES, p.REPLY, b"r1", b"m1", b"b1",
              p.ERROR, b"r2", b"info", b"", p.PARTIAL, b"r3", b"m3", b"b3"]
    assert p.parse_client_replies(merged) == [
        (p.REPLY, b"r1", b"m1", b"b1"), (p.ERROR, b"r2", b"info", b""),
        (p.PARTIAL, b"r3", b"m3", b"b3")]


def test_coalesce_merges_per_identity_and_keeps_order():
    def reply(identity: bytes, rid: bytes) -> list:
        return [identity, p.VERSION, p.REPLY, rid, b"meta", rid + b"-body"]

    messages = [reply(b"A", b"1"), reply(b"B", b"2"), reply(b"A", b"3"), reply(b"A", b"4")]
    out = p.coalesce_client_messages(messages)
    by_identity = {message[0]: message for message in out}
    assert set(by_identity) == {b"A", b"B"}
    assert by_identity[b"B"] == reply(b"B", b"2")  # alone: sent as it was
    assert [rid for _c, rid, _a, _b in p.parse_client_replies(by_identity[b"A"][1:])] == [
        b"1", b"3", b"4"]


def test_coalesce_splits_at_the_item_limit(monkeypatch):
    monkeypatch.setattr(p, "MAX_BATCH_ITEMS", 3)
    messages = [[b"A", p.VERSION, p.REPLY, b"%d" % i, b"m", b"b"] for i in range(7)]
    out = p.coalesce_client_messages(messages)
    rids = [rid for message in out for _c, rid, _a, _b in p.parse_client_replies(message[1:])]
    assert rids == [b"%d" % i for i in range(7)]
    assert all(len(message) <= 3 + 4 * 3 for message in out)
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
