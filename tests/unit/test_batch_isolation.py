"""Per-request failure isolation: a failing batch is retried in halves down to single requests."""

import json
import logging
import os

import pytest

from tests.models import write_model_dir
from tests.support.fake_worker_broker import decode_answers, item
from zerobatch import protocol
from zerobatch.config import ModelConfig
from zerobatch.errors import ConfigError
from zerobatch.worker.service import Service

BAD_RAISES = """
    import json

    class PredictionException(Exception):
        def __init__(self, message, error_code=500):
            super().__init__(message)
            self.message = message
            self.error_code = error_code

    def handle(data, context):
        if data is None:
            return None
        for index, row in enumerate(data):
            context.set_response_header(index, "x-index", str(index))
            context.set_response_header(index, "x-request-id", context.get_request_id(index))
        for row in data:
            body = row["body"]
            if "bad" in json.dumps(body):
                if "422" in body:
                    raise PredictionException("unprocessable " + body, 422)
                raise ValueError("bad row " + body)
        return [{"echo": row["body"], "batch_size": len(data)} for row in data]
"""


def service_for(tmp_path, source, yaml_text=None):
    path = write_model_dir(str(tmp_path / "model"), source)
    if yaml_text is not None:
        with open(os.path.join(path, "model-config.yaml"), "w", encoding="utf-8") as f:
            f.write(yaml_text)
    service = Service.load(ModelConfig("iso", path, batch_size=16))
    calls = []
    entry_point = service.entry_point

    def counted(data, context):
        calls.append([row["body"] for row in data])
        return entry_point(data, context)

    service.entry_point = counted
    return service, calls


def run_batch(service, bodies, batch_id=3):
    frames = service.run_batch(batch_id, [item(json.dumps(b), request_id=f"r{i}")
                                          for i, b in enumerate(bodies)])
    _batch_id, flat = protocol.split_worker_reply(frames)
    return decode_answers(flat)


def test_only_the_bad_request_errors(tmp_path, caplog):
    service, calls = service_for(tmp_path, BAD_RAISES)
    with caplog.at_level(logging.INFO, logger="zerobatch.worker.service"):
        replies = run_batch(service, ["ok0", "bad1", "ok2", "ok3"])
    assert [r.kind for r in replies] == ["reply", "error", "reply", "reply"]
    assert (replies[1].code, replies[1].status, replies[1].message) == (
        "handler_error", 500, "ValueError: bad row bad1")
    results = {i: json.loads(replies[i].body) for i in (0, 2, 3)}
    assert results == {0: {"echo": "ok0", "batch_size": 1},
                       2: {"echo": "ok2", "batch_size": 2},
                       3: {"echo": "ok3", "batch_size": 2}}
    # each sub-batch had its own context, indexed from 0, with the right request ids
    assert [(replies[i].headers["x-index"], replies[i].headers["x-request-id"])
            for i in (0, 2, 3)] == [("0", "r0"), ("0", "r2"), ("1", "r3")]
    assert calls == [["ok0", "bad1", "ok2", "ok3"], ["ok0", "bad1"], ["ok0"], ["bad1"],
                     ["ok2", "ok3"]]
    splits = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(splits) == 2 and "batch 3" in splits[0] and "4 requests" in splits[0]
    assert "2 + 2" in splits[0] and "1 + 1" in splits[1]


def test_each_failing_request_gets_its_own_error(tmp_path):
    service, _calls = service_for(tmp_path, BAD_RAISES)
    replies = run_batch(service, ["bad-a", "ok", "bad-422", "ok"])
    assert [(r.kind, r.status) for r in replies] == [
        ("error", 500), ("reply", 200), ("error", 422), ("reply", 200)]
    assert replies[0].message == "ValueError: bad row bad-a"
    assert (replies[2].code, replies[2].message) == ("prediction_error", "unprocessable bad-422")


def test_prediction_exception_status_for_the_bad_request_only(tmp_path):
    service, _calls = service_for(tmp_path, BAD_RAISES)
    replies = run_batch(service, ["ok", "ok", "bad 422", "ok", "ok"])
    assert [(r.kind, r.status) for r in replies] == [
        ("reply", 200), ("reply", 200), ("error", 422), ("reply", 200), ("reply", 200)]


@pytest.mark.parametrize("size", [2, 3, 5, 8, 13])
def test_calls_are_bounded(tmp_path, size):
    service, calls = service_for(tmp_path, BAD_RAISES)
    replies = run_batch(service, ["bad"] * size)  # worst case: every request fails
    assert [(r.kind, r.status) for r in replies] == [("error", 500)] * size
    assert len(calls) == 2 * size - 1
    service2, calls2 = service_for(tmp_path / "one", BAD_RAISES)
    run_batch(service2, ["ok"] * (size - 1) + ["bad"])  # one failure: about 2 log2(n) + 1
    assert len(calls2) <= 2 * (size - 1).bit_length() + 1


def test_wrong_result_count_is_isolated(tmp_path):
    service, calls = service_for(tmp_path, """
        def handle(data, context):
            if data is None:
                return None
            return [row["body"] for row in data if row["body"] != "lost"]
        """)
    replies = run_batch(service, ["a", "lost", "c", "d"])
    assert [r.kind for r in replies] == ["reply", "error", "reply", "reply"]
    assert replies[1].message == "handler returned 0 results for 1 requests"
    assert [replies[i].body for i in (0, 2, 3)] == [b"a", b"c", b"d"]
    assert len(calls) == 5


def test_a_single_request_is_not_retried(tmp_path):
    service, calls = service_for(tmp_path, BAD_RAISES)
    [reply] = run_batch(service, ["bad"])
    assert reply.kind == "error" and len(calls) == 1


def test_retry_failed_batch_false_fails_the_whole_batch(tmp_path):
    service, calls = service_for(tmp_path, BAD_RAISES, "retryFailedBatch: false\n")
    assert service.retry_failed_batch is False
    replies = run_batch(service, ["ok0", "bad1", "ok2", "ok3"])
    assert [(r.kind, r.status, r.message) for r in replies] == [
        ("error", 500, "ValueError: bad row bad1")] * 4
    assert len(calls) == 1


def test_retry_failed_batch_must_be_a_bool(tmp_path):
    with pytest.raises(ConfigError, match="retryFailedBatch must be true or false"):
        service_for(tmp_path, BAD_RAISES, "retryFailedBatch: sometimes\n")


def test_isolation_is_on_by_default_and_with_true(tmp_path):
    service, _ = service_for(tmp_path, BAD_RAISES, "retryFailedBatch: true\nhandler: {}\n")
    assert service.retry_failed_batch is True
    assert [r.kind for r in run_batch(service, ["bad", "ok"])] == ["error", "reply"]


def test_bad_metas_keep_their_places_around_a_split(tmp_path):
    service, _calls = service_for(tmp_path, BAD_RAISES)
    items = [item('"ok0"'), (b"\xc1", b"x"), item('"bad2"'), item('"ok3"')]
    _bid, flat = protocol.split_worker_reply(service.run_batch(9, items))
    replies = decode_answers(flat)
    assert [(r.kind, r.code) for r in replies] == [
        ("reply", None), ("error", "bad_request"), ("error", "handler_error"), ("reply", None)]
    assert json.loads(replies[0].body)["echo"] == "ok0"
    assert json.loads(replies[3].body)["echo"] == "ok3"

