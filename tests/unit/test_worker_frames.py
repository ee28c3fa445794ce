"""The worker side's frames, built by zerobatch.protocol and read back by the broker's parsers."""

from zerobatch import protocol


def test_a_worker_reply_holds_one_pair_per_request_in_order():
    meta = protocol.encode_reply_meta(201, "text/plain", {"x-a": "1"})
    answers = [protocol.encode_reply_answer(meta, b"first"),
               protocol.encode_error_answer("handler_error", "ValueError: no", 500)]
    frames = protocol.encode_worker_reply(2**40 + 3, answers)
    assert frames[:2] == [protocol.VERSION, protocol.W_REPLY]
    batch_id, items = protocol.split_worker_reply(frames)
    assert batch_id == 2**40 + 3
    assert items[0][:1] == protocol.REPLY and items[1] == b"first"
    assert protocol.parse_reply_meta(items[0][1:]) == (201, "text/plain", {"x-a": "1"})
    assert items[2][:1] == protocol.ERROR and items[3] == b""
    assert protocol.parse_error_info(items[2][1:]) == ("handler_error", "ValueError: no", 500,
                                                       None)


def test_an_empty_worker_reply_is_just_its_head():
    assert protocol.split_worker_reply(protocol.encode_worker_reply(7, [])) == (7, [])


def test_a_partial_names_its_batch_and_request():
    meta = protocol.encode_reply_meta(200, "text/plain")
    frames = protocol.encode_worker_partial(9, 70000, meta, b"chunk")
    assert frames[:2] == [protocol.VERSION, protocol.W_PARTIAL]
    assert protocol.parse_worker_partial(frames) == (9, 70000, meta, b"chunk")


def test_is_heartbeat():
    assert protocol.is_heartbeat(protocol.HEARTBEAT_FRAMES)
    assert not protocol.is_heartbeat(protocol.DISCONNECT_FRAMES)
    assert not protocol.is_heartbeat([b"ZB9", protocol.W_HEARTBEAT])
    assert not protocol.is_heartbeat([*protocol.HEARTBEAT_FRAMES, b"extra"])
