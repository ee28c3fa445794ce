"""BaseHandler.handle dispatches as TorchServe's does: predictions, explanations (the
`explain: True` header) and descriptions (`describe: True`), with TorchServe's default
explain_handle over get_insights, clear errors where explanations cannot run, and a batch that
mixes predictions and explanations run as two sub-batches."""

from __future__ import annotations

import importlib
import sys

import pytest

from zerobatch.errors import HandlerError
from zerobatch.worker.base_handler import BaseHandler
from zerobatch.worker.context import Context, RequestProcessor


def batch_context(*headers: dict) -> Context:
    """A context for a batch of requests with these headers (request ids r0, r1, ...)."""
    context = Context("m", "/nowhere", {"model": {"modelName": "m"}}, len(headers), None)
    context.request_processor = [RequestProcessor(dict(h)) for h in headers]
    context.request_ids = {index: f"r{index}" for index in range(len(headers))}
    return context


PREDICT = {"explain": "False"}
EXPLAIN = {"explain": "True"}


class Recorder(BaseHandler):
    """Predicts "p:<row>" and explains "e:<row>@<request id>/<url_path>", noting each call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def preprocess(self, data):
        return [row["body"] for row in data]

    def inference(self, data, *args, **kwargs):
        self.calls.append(("inference", list(data)))
        return data

    def postprocess(self, data):
        return [f"p:{value}" for value in data]

    def explain_handle(self, data_preprocess, raw_data):
        self.calls.append(("explain", list(data_preprocess), self.explain))
        context = self.context
        return [f"e:{value}@{context.get_request_id(index)}/"
                f"{context.get_request_header(index, 'url_path')}"
                for index, value in enumerate(data_preprocess)]


def test_predictions_run_preprocess_inference_postprocess():
    handler = Recorder()
    context = batch_context(PREDICT, {})  # no header at all is a prediction too
    assert handler.handle([{"body": 1}, {"body": 2}], context) == ["p:1", "p:2"]
    assert handler.calls == [("inference", [1, 2])] and handler.explain is False


def test_explanations_run_explain_handle_with_the_preprocessed_and_raw_data():
    handler = Recorder()
    context = batch_context({**EXPLAIN, "url_path": "a/b"}, EXPLAIN)
    assert handler.handle([{"body": 1}, {"body": 2}], context) == ["e:1@r0/a/b", "e:2@r1/None"]
    assert handler.calls == [("explain", [1, 2], True)]
    assert handler._is_explain() is True


def test_a_mixed_batch_runs_as_two_narrowed_sub_batches_in_request_order():
    handler = Recorder()
    context = batch_context(PREDICT, {**EXPLAIN, "url_path": "x"}, PREDICT, EXPLAIN)
    processors, request_ids = context.request_processor, context.request_ids
    rows = [{"body": value} for value in "abcd"]
    assert handler.handle(rows, context) == ["p:a", "e:b@r1/x", "p:c", "e:d@r3/None"]
    assert handler.calls == [("inference", ["a", "c"]), ("explain", ["b", "d"], True)]
    assert context.request_processor is processors and context.request_ids is request_ids


def test_a_sub_batch_streams_to_its_own_requests():
    sent = []

    class Streamer(Recorder):
        def explain_handle(self, data_preprocess, raw_data):
            self.context.send_partial(0, "partial")
            return ["done"]

    context = batch_context(PREDICT, EXPLAIN)
    context.send_partial = lambda index, value, status=None: sent.append((index, value))
    assert Streamer().handle([{"body": 1}, {"body": 2}], context) == ["p:1", "done"]
    assert sent == [(1, "partial")]


def test_a_sub_batch_with_the_wrong_number_of_answers_fails_clearly():
    class Short(Recorder):
        def explain_handle(self, data_preprocess, raw_data):
            return []

    with pytest.raises(HandlerError, match="explain_handle answered 0 for a batch of 1"):
        Short().handle([{"body": 1}, {"body": 2}], batch_context(PREDICT, EXPLAIN))


class Insights(BaseHandler):
    def preprocess(self, data):
        return ["pre"] * len(data)

    def get_insights(self, tensor_data, inputs, target=0):
        return [{"pre": tensor_data, "inputs": inputs, "target": target}]


@pytest.mark.parametrize("row, inputs, target", [
    ({"data": b"abc", "target": b"2"}, b"abc", b"2"),
    ({"body": {"data": "abc", "target": 2}}, {"data": "abc", "target": 2}, 0),
    ({"body": b"abc"}, b"abc", 0),
])
def test_the_default_explain_handle_asks_get_insights_about_the_first_row(row, inputs, target):
    answer = Insights().handle([row], batch_context(EXPLAIN))
    assert answer == [{"pre": ["pre"], "inputs": inputs, "target": target}]


def test_a_handler_without_insights_says_what_to_define():
    class Plain(BaseHandler):
        def preprocess(self, data):
            return data

    with pytest.raises(HandlerError, match="Plain cannot explain: define explain_handle"):
        Plain().handle([{"body": 1}], batch_context(EXPLAIN))


def test_insights_that_need_a_missing_captum_say_so(monkeypatch):
    class NeedsCaptum(Insights):
        def get_insights(self, tensor_data, inputs, target=0):
            importlib.import_module("captum.attr")

    # as if Captum were not installed (the tests install it): its import fails
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.delitem(sys.modules, "captum.attr", raising=False)
    with pytest.raises(HandlerError, match=r"need Captum.*pip install captum"):
        NeedsCaptum().handle([{"body": 1}], batch_context(EXPLAIN))


def test_another_missing_module_is_not_blamed_on_captum():
    class NeedsOther(Insights):
        def get_insights(self, tensor_data, inputs, target=0):
            importlib.import_module("surely_not_installed_module_xyz")

    with pytest.raises(ModuleNotFoundError, match="surely_not_installed_module_xyz"):
        NeedsOther().handle([{"body": 1}], batch_context(EXPLAIN))


def test_a_describe_request_answers_describe_handle():
    class Described(Recorder):
        def describe_handle(self):
            return {"about": "m"}

    handler = Described()
    assert handler.handle([{"body": 1}], batch_context({"describe": "True"})) == [{"about": "m"}]
    assert handler.calls == []
    assert BaseHandler().describe_handle() is None
