"""The codec and the Service: one BATCH in, one W_REPLY out, without sockets."""

import json

import numpy as np
import pytest

from tests.models import model_path, write_model_dir
from tests.support.fake_worker_broker import decode_answers, item
from tests.support.forms import multipart
from zerobatch import protocol
from zerobatch.config import ModelConfig
from zerobatch.worker.codec import decode_body, encode_value
from zerobatch.worker.service import MAX_ERROR_MESSAGE_CHARS, Service


def load(path, name="test"):
    return Service.load(ModelConfig(name, str(path), batch_size=8))


def run_batch(service, items, batch_id=1):
    frames = service.run_batch(batch_id, items)
    assert frames[:2] == [protocol.VERSION, protocol.W_REPLY]
    got_batch_id, flat = protocol.split_worker_reply(frames)
    assert got_batch_id == batch_id
    return decode_answers(flat)


def handler_model(tmp_path, source):
    return load(write_model_dir(str(tmp_path), source))


# ------------------------------------------------------------------ codec

@pytest.mark.parametrize("content_type, body, expected", [
    ("application/json", b'{"a": [1, 2]}', {"a": [1, 2]}),
    ("application/json; charset=utf-8", b"[1]", [1]),
    ("Application/JSON", b"3", 3),
    ("text/plain", "h\u00e9".encode(), "h\u00e9"),
    ("text/csv; charset=utf-8", b"a,b", "a,b"),
    ("application/octet-stream", b"\x00\xff", bytearray(b"\x00\xff")),
    ("image/png", b"\x89PNG", bytearray(b"\x89PNG")),
    ("", b"raw", bytearray(b"raw")),
])
def test_decode_body(content_type, body, expected):
    value = decode_body(content_type, body)
    assert value == expected and type(value) is type(expected)


def test_decode_body_accepts_buffers():
    assert decode_body("application/json", memoryview(b'{"x": 1}')) == {"x": 1}
    assert decode_body("text/plain", memoryview(b"hi")) == "hi"
    assert decode_body("application/x", memoryview(b"hi")) == bytearray(b"hi")


def test_undecodable_bodies_pass_through_as_bytes():
    assert decode_body("application/json", b"{nope") == bytearray(b"{nope")
    assert decode_body("text/plain", b"\xff\xfe") == bytearray(b"\xff\xfe")


def test_encode_value():
    assert encode_value(b"ab") == (b"ab", "application/octet-stream")
    assert encode_value(bytearray(b"ab")) == (bytearray(b"ab"), "application/octet-stream")
    assert encode_value("h\u00e9") == ("h\u00e9".encode(), "text/plain")
    body, content_type = encode_value({"a": [1, 2.5, None]})
    assert content_type == "application/json"
    assert body == json.dumps({"a": [1, 2.5, None]}, indent=2).encode()  # as TorchServe
    assert json.loads(encode_value(np.arange(3))[0]) == [0, 1, 2]
    assert json.loads(encode_value([np.float32(0.5)])[0]) == [0.5]
    with pytest.raises(TypeError):
        encode_value(object())


# ------------------------------------------------------------------ service

def test_echo_batch_in_order():
    service = load(model_path("echo"), "echo")
    replies = run_batch(service, [
        item('{"a": 1}'),
        item("text", "text/plain"),
        item(b"\x00\x01", "application/octet-stream"),
    ])
    assert [(r.kind, r.status, r.content_type) for r in replies] == [
        ("reply", 200, "application/json"),
        ("reply", 200, "text/plain"),
        ("reply", 200, "application/octet-stream"),
    ]
    assert json.loads(replies[0].body) == {"a": 1}
    assert replies[1].body == b"text" and replies[2].body == b"\x00\x01"
    assert all(r.headers is None for r in replies)


def test_request_ids_headers_and_content_type_reach_the_handler(tmp_path):
    service = handler_model(tmp_path, """
        def handle(data, context):
            if data is None:
                return None
            return [{
                "request_id": context.get_request_id(i),
                "trace": context.get_request_header(i, "x-trace"),
                "body_type": context.get_request_header(i, "body"),
            } for i in range(len(data))]
        """)
    replies = run_batch(service, [
        item("1", headers={"x-trace": "abc"}, request_id="rid-1"),
        item("2", "text/plain"),
    ], batch_id=42)
    assert [json.loads(r.body) for r in replies] == [
        {"request_id": "rid-1", "trace": "abc", "body_type": {"content-type": "application/json"}},
        {"request_id": "42-1", "trace": None, "body_type": {"content-type": "text/plain"}},
    ]


def test_status_content_type_and_headers_from_the_context(tmp_path):
    service = handler_model(tmp_path, """
        def handle(data, context):
            if data is None:
                return None
            context.set_response_status(201, "Created", 0)
            context.set_response_content_type(0, "application/x-custom")
            context.set_response_header(0, "x-count", 7)
            context.set_response_status(404, "Not Found", 1)
            return [b"custom", {"error": "missing"}]
        """)
    first, second = run_batch(service, [item("1"), item("2")])
    # the headers are the handler's, its content-type too (the HTTP answer's); content_type
    # is the body's: the handler's, else the codec's
    assert (first.status, first.content_type, first.headers, first.body) == (
        201, "application/x-custom", {"content-type": "application/x-custom", "x-count": "7"},
        b"custom")
    assert (second.status, second.content_type, second.headers) == (
        404, "application/json", None)


def test_handler_state_does_not_leak_between_batches(tmp_path):
    service = handler_model(tmp_path, """
        def handle(data, context):
            if data is None:
                return None
            if data[0]["body"] == "set":
                context.set_response_status(500, "", 0)
                context.set_response_header(0, "x-once", "1")
            return ["done"] * len(data)
        """)
    assert run_batch(service, [item("set", "text/plain")])[0].status == 500
    again = run_batch(service, [item("plain", "text/plain")])[0]
    assert (again.status, again.headers) == (200, None)


def test_handler_exception_answers_only_the_failing_request():
    service = load(model_path("failing"), "failing")
    replies = run_batch(service, [item('"ok"'), item('"please fail"'), item('"ok"')])
    assert [(r.kind, r.code, r.status, r.message) for r in replies] == [
        ("reply", None, 200, None), ("error", "handler_error", 500, "ValueError: asked to fail"),
        ("reply", None, 200, None)]
    assert run_batch(service, [item('"fine"')])[0].body == b"fine"  # a JSON str echoes as text


def test_prediction_exception_keeps_its_status(tmp_path):
    service = handler_model(tmp_path, """
        class PredictionException(Exception):
            def __init__(self, message, error_code=500):
                super().__init__(message)
                self.message = message
                self.error_code = error_code

        def handle(data, context):
            if data is None:
                return None
            raise PredictionException("input too long", 413)
        """)
    [reply] = run_batch(service, [item("1")])
    assert (reply.code, reply.status, reply.message) == ("prediction_error", 413,
                                                         "input too long")


def test_long_error_messages_are_truncated(tmp_path):
    service = handler_model(tmp_path, """
        def handle(data, context):
            if data is None:
                return None
            raise RuntimeError("x" * 100000)
        """)
    [reply] = run_batch(service, [item("1")])
    assert len(reply.message) < MAX_ERROR_MESSAGE_CHARS + 100
    assert reply.message.startswith("RuntimeError: xxx") and "truncated" in reply.message


@pytest.mark.parametrize("result, code, expected", [
    # with failure isolation each request ends up alone in its own retried call
    ("[]", "result_count_mismatch", "handler returned 0 results for 1 requests"),
    ("[1, 2, 3]", "result_count_mismatch", "handler returned 3 results for 1 requests"),
    ("{'a': 1}", "bad_handler_output",
     "handler returned dict, expected a list with one result for each of 1"),
    ("None", "bad_handler_output", "handler returned NoneType"),
])
def test_wrong_result_count_or_type(tmp_path, result, code, expected):
    service = handler_model(tmp_path, f"""
        def handle(data, context):
            if data is None:
                return None
            return {result}
        """)
    replies = run_batch(service, [item("1"), item("2")])
    assert len(replies) == 2
    for reply in replies:
        assert (reply.kind, reply.code, reply.status) == ("error", code, 500)
        assert expected in reply.message


def test_unserializable_result_fails_only_its_request(tmp_path):
    service = handler_model(tmp_path, """
        def handle(data, context):
            if data is None:
                return None
            return ["fine", object()]
        """)
    ok, bad = run_batch(service, [item("1"), item("2")])
    assert ok.body == b"fine"
    assert (bad.kind, bad.code) == ("error", "unserializable_result")
    assert "result 1 cannot be serialized: TypeError" in bad.message


def test_bad_meta_fails_only_its_request():
    service = load(model_path("batch_size_reporter"), "batch_size_reporter")
    replies = run_batch(service, [
        item('"a"'),
        (b"\xc1garbage", b"body"),
        (protocol.packb(["application/json", "not a map", None]), b"1"),
        item('"d"'),
    ])
    assert [r.kind for r in replies] == ["reply", "error", "error", "reply"]
    assert [json.loads(replies[i].body) for i in (0, 3)] == [
        {"batch_size": 2, "body": "a"}, {"batch_size": 2, "body": "d"}]
    for reply in replies[1:3]:
        assert (reply.code, reply.status) == ("bad_request", 400)
        assert reply.message.startswith("bad request meta:")


def test_a_batch_of_only_bad_metas_skips_the_handler():
    service = load(model_path("failing"), "failing")
    replies = run_batch(service, [(b"\xc1", b"fail")])
    assert [(r.kind, r.code) for r in replies] == [("error", "bad_request")]


def test_a_handler_that_records_nothing_leaves_no_records():
    # PredictionTime goes straight to the exporter (worker.metrics_export), not the records
    service = load(model_path("echo"), "echo")
    run_batch(service, [item("1", request_id="r")])
    assert service.context.metrics.records == []


def test_grouped_batches_run_one_handler_call_each_and_answer_in_one_reply(tmp_path):
    service = handler_model(tmp_path, """
        calls = []

        def handle(data, context):
            if data is None:
                return None
            calls.append(len(data))
            if any(row["body"] == "fail" for row in data):
                raise ValueError("this batch fails")
            return [{"call": len(calls), "size": len(data),
                     "id": context.get_request_id(i)} for i in range(len(data))]
        """)
    items = [item(json.dumps(body)) for body in ("a", "b", "c", "fail", "d", "e")]
    frames = service.run_batch(5, items, [2, 1, 1, 2])
    batch_id, flat = protocol.split_worker_reply(frames)
    replies = decode_answers(flat)
    assert batch_id == 5 and len(replies) == 6
    answers = [json.loads(r.body) if r.kind == "reply" else r.kind for r in replies]
    # four handler calls of at most two requests; the failing one fails only its own batch
    assert answers == [{"call": 1, "size": 2, "id": "5-0"}, {"call": 1, "size": 2, "id": "5-1"},
                       {"call": 2, "size": 1, "id": "5-2"}, "error",
                       {"call": 4, "size": 2, "id": "5-4"}, {"call": 4, "size": 2, "id": "5-5"}]


# ------------------------------------------------------------------ form bodies

ECHO_FIELDS = """
    def handle(data, context):
        if data is None:
            return None
        return [{"keys": sorted(row),
                 "data": row.get("data") if isinstance(row.get("data"), (str, dict)) else
                         bytes(row.get("data") or row.get("body")).decode("latin-1"),
                 "type": context.get_request_header(i, "data")}
                for i, row in enumerate(data)]
"""


def test_form_requests_reach_the_handler_one_key_per_field(tmp_path):
    service = handler_model(tmp_path, ECHO_FIELDS)
    form = multipart("b", ("data", "in.txt", "text/plain", b"from a form"),
                     ("extra", None, None, b"x"))
    replies = run_batch(service, [
        item(form, "multipart/form-data; boundary=b", headers={"x-trace": "t"}),
        item(b"raw body", "application/octet-stream"),
        item(b"data=urlencoded", "application/x-www-form-urlencoded"),
    ])
    assert [json.loads(reply.body) for reply in replies] == [
        {"keys": ["data", "extra"], "data": "from a form",
         "type": {"content-type": "text/plain"}},
        {"keys": ["body"], "data": "raw body", "type": None},
        {"keys": ["data"], "data": "urlencoded", "type": {"content-type": ""}},
    ]


def test_a_malformed_form_fails_only_its_request(tmp_path):
    service = handler_model(tmp_path, ECHO_FIELDS)
    replies = run_batch(service, [
        item(b"raw", "application/octet-stream"),
        item(b"--b\r\ncut short", "multipart/form-data; boundary=b"),
        item(multipart("b", ("data", None, None, b"ok")), "multipart/form-data; boundary=b"),
    ])
    assert [reply.kind for reply in replies] == ["reply", "error", "reply"]
    assert (replies[1].code, replies[1].status) == ("bad_request", 400)
    assert replies[1].message == "a part of the multipart body has no end to its headers"
    assert json.loads(replies[2].body)["data"] == "ok"
