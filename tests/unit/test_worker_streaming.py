"""send_intermediate_predict_response through the Service: W_PARTIAL frames, in order, before
the W_REPLY, each naming its request's position in the BATCH."""

import json

import pytest

from tests.models import model_path, write_model_dir
from tests.support.fake_worker_broker import decode_answers, item
from zerobatch import protocol
from zerobatch.config import ModelConfig
from zerobatch.worker.compat.handler_utils import send_intermediate_predict_response
from zerobatch.worker.service import Service


def streaming_service(path, name="streaming"):
    service = Service.load(ModelConfig(name, path, batch_size=8))
    sent = []
    service.partial_sink = sent.append
    return service, sent


def partials(sent):
    out = []
    for frames in sent:
        assert frames[:2] == [protocol.VERSION, protocol.W_PARTIAL]
        batch_id, index, meta, body = protocol.parse_worker_partial(frames)
        status, content_type, _headers = protocol.parse_reply_meta(meta)
        out.append((batch_id, index, status, content_type, bytes(body)))
    return out


def replies(frames):
    _bid, flat = protocol.split_worker_reply(frames)
    return decode_answers(flat)


def test_chunks_go_out_in_order_with_batch_positions():
    service, sent = streaming_service(model_path("streaming"))
    # position 1 has a malformed meta: the handler sees 2 requests, chunks name positions 0, 2
    frames = service.run_batch(7, [item("a", "text/plain"), (b"\xc1", b"x"),
                                   item("c", "text/plain")])
    assert partials(sent) == [
        (7, position, 200, "text/plain", f"{body}-{step},".encode())
        for step in range(3) for position, body in ((0, "a"), (2, "c"))]
    assert [(r.kind, r.body) for r in replies(frames)] == [
        ("reply", b"a-end"), ("error", b""), ("reply", b"c-end")]


def test_chunks_of_grouped_batches_name_positions_in_the_whole_message():
    service, sent = streaming_service(model_path("streaming"))
    frames = service.run_batch(8, [item("a", "text/plain"), item("b", "text/plain"),
                                   item("c", "text/plain")], [1, 2])
    assert partials(sent) == (
        [(8, 0, 200, "text/plain", f"a-{step},".encode()) for step in range(3)]
        + [(8, position, 200, "text/plain", f"{body}-{step},".encode())
           for step in range(3) for position, body in ((1, "b"), (2, "c"))])
    assert [r.body for r in replies(frames)] == [b"a-end", b"b-end", b"c-end"]


def test_chunks_carry_the_status_and_headers_set_so_far(tmp_path):
    path = write_model_dir(str(tmp_path / "m"), """
        from ts.handler_utils.utils import send_intermediate_predict_response

        def handle(data, context):
            if data is None:
                return None
            context.set_response_header(0, "x-step", "first")
            send_intermediate_predict_response([{"n": 1}], {0: "r"}, "msg", 206, context)
            return ["done"]
        """)
    service, sent = streaming_service(path, "m")
    [reply] = replies(service.run_batch(1, [item("1")]))
    [(_bid, index, status, content_type, body)] = partials(sent)
    assert (index, status, content_type, json.loads(body)) == (
        0, 206, "application/json", {"n": 1})
    assert protocol.parse_reply_meta(protocol.parse_worker_partial(sent[0])[2])[2] == {
        "x-step": "first"}
    assert (reply.status, reply.body) == (200, b"done")


def test_a_sub_batch_that_streamed_is_not_retried(tmp_path):
    path = write_model_dir(str(tmp_path / "m"), """
        from ts.handler_utils.utils import send_intermediate_predict_response

        def handle(data, context):
            if data is None:
                return None
            ids = {i: context.get_request_id(i) for i in range(len(data))}
            send_intermediate_predict_response(["x"] * len(data), ids, "", 200, context)
            if any(row["body"] == "bad" for row in data):
                raise ValueError("late failure")
            return ["ok"] * len(data)
        """)
    service, sent = streaming_service(path, "m")
    got = replies(service.run_batch(1, [item("good", "text/plain"), item("bad", "text/plain")]))
    assert [(r.kind, r.message) for r in got] == [("error", "ValueError: late failure")] * 2
    assert len(sent) == 2  # one call: its chunks already went out, so no halves


def test_without_a_worker_context_it_says_so():
    class Bare:
        pass
    with pytest.raises(RuntimeError, match="running zerobatch worker"):
        send_intermediate_predict_response(["x"], {0: "r"}, "", 200, Bare())


def test_a_mismatched_length_is_refused():
    service, _sent = streaming_service(model_path("streaming"))
    with pytest.raises(ValueError, match="2 results for 1 requests"):
        send_intermediate_predict_response(["a", "b"], {0: "r"}, "", 200, service.context)
